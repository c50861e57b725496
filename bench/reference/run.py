"""Times PyTorch's version of moma's benchmarks (same shapes, same math, same data) for
`npm run bench -- torch` (bench/torch.js writes the job file and pairs the results with moma's rows).

  /usr/bin/python3 bench/reference/run.py --spec jobs.json

jobs.json: {"threads": 2, "kernels": false, "jobs": [{"kind": "ffn" | "block" | "step", ...}]}
(see bench/layers.js and bench/train_step.js for the fields). Prints one JSON object per line:
first {"info": {...}} (torch version, threads, the BLAS library loaded and OpenBLAS's core), then
{"op", "shape", "ms", ...} per benchmark. Times are medians over interleaved rounds after a warm-up
round, like moma's; forward + backward (+ clip and AdamW for steps).

Threads: torch.set_num_threads(threads), and OMP/OpenBLAS thread counts in the environment before
torch loads, with OMP_WAIT_POLICY=PASSIVE (spinning OpenMP workers and OpenBLAS's threads fight
over few cores: a tiny-model step took 3.6 s instead of 0.1 s on 2 cores). OpenBLAS's
DYNAMIC_ARCH detection can miss a virtual machine's CPU (0.3.21 reports "Prescott", SSE3 kernels,
on this project's Sapphire Rapids VM); when the core it picks lacks the AVX2 / AVX-512 the CPU
has, OPENBLAS_CORETYPE is set to Haswell / SkylakeX (an explicit OPENBLAS_CORETYPE is kept). The
info line says what was used.
"""
import argparse
import json
import math
import os
import subprocess
import sys
import time

PROBE = ("import ctypes; l = ctypes.CDLL('libopenblas.so.0'); l.openblas_get_corename.restype = ctypes.c_char_p; "
         "print(l.openblas_get_corename().decode())")
GENERIC_CORES = {'prescott', 'core2', 'penryn', 'dunnington', 'nehalem', 'atom', 'katmai', 'coppermine', 'northwood',
                 'banias', 'bulldozer', 'piledriver', 'steamroller', 'excavator', 'barcelona', 'opteron', 'sandybridge'}


def cpu_flags():
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('flags'):
                    return set(line.split(':', 1)[1].split())
    except OSError:
        pass
    return set()


def openblas_core(env):
    """The core OpenBLAS picks with this environment, or None when libopenblas is absent."""
    try:
        out = subprocess.run([sys.executable, '-c', PROBE], env=env, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def configure_threads(threads):
    """Sets the thread and OpenBLAS core environment before torch loads; returns what was decided."""
    for name in ('OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS', 'MKL_NUM_THREADS'):
        os.environ[name] = str(threads)
    # OpenMP workers that spin between parallel regions starve OpenBLAS's own threads on a small
    # machine (a tiny-model step took 3.6 s instead of 0.1 s on 2 cores): let them sleep
    os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')
    detected = openblas_core(os.environ.copy())
    chosen = None
    if detected and 'OPENBLAS_CORETYPE' not in os.environ and detected.lower() in GENERIC_CORES:
        flags = cpu_flags()
        if {'avx512f', 'avx512bw', 'avx512vl', 'avx512dq'} <= flags:
            chosen = 'SkylakeX'
        elif {'avx2', 'fma'} <= flags:
            chosen = 'Haswell'
        if chosen:
            os.environ['OPENBLAS_CORETYPE'] = chosen
    return {'openblas_detected': detected, 'openblas_coretype_set': chosen, 'omp_wait_policy': os.environ['OMP_WAIT_POLICY']}


def blas_library():
    """The BLAS shared objects mapped into this process (after torch is imported)."""
    libs = set()
    try:
        with open('/proc/self/maps') as f:
            for line in f:
                path = line.split()[-1]
                if 'blas' in path.lower() or 'mkl' in path.lower():
                    libs.add(os.path.realpath(path))
    except OSError:
        pass
    return sorted(libs)


def cpu_capability(torch):
    """ATen's vector ISA for its own kernels ('CPU capability usage: AVX2' in the build config)."""
    for line in torch.__config__.show().splitlines():
        if 'CPU capability usage' in line:
            return line.split(':', 1)[1].strip()
    return None


def emit(record):
    print(json.dumps(record), flush=True)


def median(xs):
    s = sorted(xs)
    return s[len(s) // 2]


def interleaved(fns, repeats):
    """Each fn once per round (round 0 is the warm-up); per-fn lists of ms."""
    times = [[] for _ in fns]
    for round_ in range(repeats + 1):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            ms = (time.perf_counter() - t0) * 1e3
            if round_ > 0:
                times[i].append(ms)
    return times


def ratio(times, base):
    return median([t / b for t, b in zip(times, base)])


def bench_ceiling(torch, repeats=10):
    n = 1024
    a, b = torch.randn(n, n), torch.randn(n, n)
    (t,) = interleaved([lambda: a @ b], repeats)
    emit({'op': 'matmul_f32', 'shape': f'{n}x{n}x{n}', 'ms': median(t), 'flops': 2 * n ** 3})


def bench_kernels(torch, F, repeats=10):
    """The native benchmark's shapes: RMSNorm, attention (forward), cross-entropy, AdamW."""
    from layers import rms_norm
    torch.manual_seed(3)
    x, w = torch.randn(32768, 1024), torch.ones(1024)
    (t,) = interleaved([lambda: rms_norm(x, w)], repeats)
    emit({'op': 'nn.rmsnorm', 'shape': '32768x1024', 'ms': median(t)})

    B, S, H, D = 4, 1024, 16, 64
    q, k, v = (torch.randn(B, H, S, D) for _ in range(3))
    causal = torch.ones(S, S, dtype=torch.bool).tril()
    def attention():
        s = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(D))
        return torch.softmax(s.masked_fill(~causal, float('-inf')), -1) @ v
    (t,) = interleaved([attention], repeats)
    emit({'op': 'nn.attention', 'shape': '4096x16x64 seg1024', 'ms': median(t)})

    logits = torch.randn(4096, 65536)
    targets = torch.tensor([-1 if n % 97 == 0 else (n * 7919) % 65536 for n in range(4096)])
    (t,) = interleaved([lambda: F.cross_entropy(logits, targets, ignore_index=-1, reduction='none')], repeats)
    emit({'op': 'nn.cross_entropy', 'shape': '4096x65536', 'ms': median(t)})
    del logits

    p = torch.nn.Parameter(torch.randn(1 << 26))
    p.grad = torch.randn(1 << 26)
    opt = torch.optim.AdamW([p], lr=1e-3, betas=(0.9, 0.95), eps=1e-5, weight_decay=0.1, foreach=False)
    (t,) = interleaved([opt.step], repeats)
    emit({'op': 'nn.adamw', 'shape': str(1 << 26), 'ms': median(t)})


def backward_round(module, make_output, x, dy):
    def run():
        make_output().backward(dy)
        x.grad = None
        module.zero_grad(set_to_none=True)
    return run


def bench_ffn(torch, job):
    from layers import DenseFFN, MoMaFFN
    torch.manual_seed(11)
    x = torch.randn(job['T'], job['d'], requires_grad=True)
    dy = torch.randn(job['T'], job['d']) * 1e-3
    modality = torch.tensor(job['modality'], dtype=torch.int64)
    modules = [DenseFFN(job['d'], job['f']) if v['groups'] is None else MoMaFFN(job['d'], job['f'], v['groups'])
               for v in job['variants']]
    runs = [backward_round(m, (lambda m=m: m(x, modality)), x, dy) for m in modules]
    times = interleaved(runs, job['repeats'])
    for i, v in enumerate(job['variants']):
        extra = {'ratio_vs_dense': ratio(times[i], times[0])} if i > 0 else {}
        emit({'op': v['op'], 'shape': v['shape'], 'ms': median(times[i]), 'flops': v['flops'], **extra})


def bench_block(torch, job):
    from layers import DecoderBlock, MoDBlock, MoMaFFN, Rows
    torch.manual_seed(13)
    T, S, d = job['T'], job['S'], job['d']
    block = DecoderBlock(d, job['heads'], MoMaFFN(d, job['f'], job['groups']))
    mod_block = MoDBlock(block, d, job['capacity'])
    x = torch.randn(T, d, requires_grad=True)
    dy = torch.randn(T, d) * 1e-3
    rows = torch.arange(T)
    ctx = Rows(rows % S, rows - rows % S, torch.tensor(job['modality'], dtype=torch.int64), rows // S, T)
    runs = [backward_round(mod_block, (lambda m=m: m(x, ctx)), x, dy) for m in (block, mod_block)]
    times = interleaved(runs, job['repeats'])
    for i, v in enumerate(job['variants']):
        extra = {'ratio_vs_full': ratio(times[i], times[0])} if v['mod'] else {}
        emit({'op': v['op'], 'shape': v['shape'], 'ms': median(times[i]), 'flops': v['flops'], **extra})


def bench_step(torch, job):
    from layers import Transformer, decays
    b = job['batch']
    batch = {
        'tokens': torch.tensor(b['tokens'], dtype=torch.int64), 'targets': torch.tensor(b['targets'], dtype=torch.int64),
        'positions': torch.tensor(b['positions'], dtype=torch.int64), 'seg_start': torch.tensor(b['seg_start'], dtype=torch.int64),
        'modality': torch.tensor(b['modality'], dtype=torch.int64), 'seq_len': b['seq_len'],
    }
    o = job['optimizer']
    runs, losses = [], []
    for i, v in enumerate(job['variants']):
        torch.manual_seed(5 + i)
        model = Transformer(v['config'])
        named = list(model.named_parameters())
        opt = torch.optim.AdamW([{'params': [p for n, p in named if decays(n)], 'weight_decay': o['weight_decay']},
                                 {'params': [p for n, p in named if not decays(n)], 'weight_decay': 0.0}],
                                lr=o['lr'], betas=tuple(o['betas']), eps=o['eps'])
        seen = []
        losses.append(seen)

        def step(model=model, opt=opt, seen=seen):
            opt.zero_grad(set_to_none=True)
            loss = model.loss(batch)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), o['clip_norm'])
            opt.step()
            seen.append(float(loss))
        runs.append(step)
    times = interleaved(runs, job['repeats'])
    for i, v in enumerate(job['variants']):
        extra = {'ratio_vs_dense': ratio(times[i], times[v['dense']])} if v.get('dense') is not None else {}
        emit({'op': v['op'], 'shape': v['shape'], 'ms': median(times[i]), 'flops': v['flops'],
              'loss_first': losses[i][0], 'loss_last': losses[i][-1], **extra})


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('--spec', required=True, help='the job file bench/torch.js writes')
    args = parser.parse_args()
    with open(args.spec) as f:
        spec = json.load(f)
    threads = int(spec['threads'])
    decided = configure_threads(threads)
    import torch
    import torch.nn.functional as F
    torch.set_num_threads(threads)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    emit({'info': {'torch': torch.__version__, 'threads': torch.get_num_threads(), 'blas': blas_library(),
                   'openblas_core': openblas_core(os.environ.copy()), **decided,
                   'cpu_capability': cpu_capability(torch)}})
    torch.set_grad_enabled(True)
    bench_ceiling(torch)
    if spec.get('kernels'):
        bench_kernels(torch, F)
    for job in spec['jobs']:
        {'ffn': bench_ffn, 'block': bench_block, 'step': bench_step}[job['kind']](torch, job)


if __name__ == '__main__':
    main()
