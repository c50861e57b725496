"""Times PyTorch's version of moma's benchmarks (same shapes, same math, same data) for
`npm run bench -- torch` (bench/torch.js writes the job file and pairs the results with moma's rows)
and for scripts/gpu-check.sh (the eager reference FFN layers on the GPU).

  /usr/bin/python3 bench/reference/run.py --spec jobs.json [--device cpu|cuda[:N]] [--dtype float32|bfloat16]
  python3 bench/reference/run.py --layers T [--repeats N] --device cuda --dtype bfloat16

jobs.json: {"threads": 2, "kernels": false, "jobs": [{"kind": "ffn" | "block" | "step", ...}]}
(see bench/layers.js and bench/train_step.js for the fields). --layers T builds, without Node, the
job bench/layers.js makes for its FFN layers at T rows (dense SwiGLU, moma 4t4i and moe 8x at
d 1024, f 4096, the same modality pattern), so the rows pair with moma's layer.*.fwd_bwd rows of
`bench/run.js layers` on the same device. Prints one JSON object per line: first {"info": {...}}
(torch version, device, dtype, threads, the BLAS library loaded and OpenBLAS's core), then
{"op", "shape", "ms", ...} per benchmark. Times are medians over interleaved rounds after a warm-up
round, like moma's; forward + backward (+ clip and AdamW for steps); on a GPU each timed call ends
with a synchronisation. --dtype bfloat16 converts the FFN and block modules and their inputs and
runs the training steps under autocast (float32 weights, as moma trains); the CPU kernels of
"kernels": true are CPU only.

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


class Placement:
    """Where a benchmark runs: device, compute dtype, and the wait for the device's queue."""

    def __init__(self, torch, device, dtype):
        self.torch, self.device, self.dtype = torch, torch.device(device), getattr(torch, dtype)
        self.cuda = self.device.type == 'cuda'

    def sync(self):
        if self.cuda:
            self.torch.cuda.synchronize(self.device)

    def module(self, m):
        return m.to(device=self.device, dtype=self.dtype)

    def randn(self, *shape, requires_grad=False):
        return self.torch.randn(*shape).to(device=self.device, dtype=self.dtype).requires_grad_(requires_grad)

    def ids(self, values):
        return self.torch.tensor(values, dtype=self.torch.int64, device=self.device)

    def autocast(self):
        """Mixed precision for whole training steps (float32 weights), or nothing for float32."""
        if self.dtype == self.torch.float32:
            import contextlib
            return contextlib.nullcontext()
        return self.torch.autocast(self.device.type, dtype=self.dtype)


def interleaved(fns, repeats, sync=lambda: None):
    """Each fn once per round (round 0 is the warm-up); per-fn lists of ms (each call ends with sync())."""
    times = [[] for _ in fns]
    for round_ in range(repeats + 1):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            sync()
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


def bench_ffn(torch, job, at):
    from layers import DenseFFN, MoMaFFN
    torch.manual_seed(11)
    x = at.randn(job['T'], job['d'], requires_grad=True)
    dy = at.randn(job['T'], job['d']) * 1e-3
    modality = at.ids(job['modality'])
    modules = [at.module(DenseFFN(job['d'], job['f']) if v['groups'] is None else MoMaFFN(job['d'], job['f'], v['groups']))
               for v in job['variants']]
    runs = [backward_round(m, (lambda m=m: m(x, modality)), x, dy) for m in modules]
    times = interleaved(runs, job['repeats'], at.sync)
    for i, v in enumerate(job['variants']):
        extra = {'ratio_vs_dense': ratio(times[i], times[0])} if i > 0 else {}
        emit({'op': v['op'], 'shape': v['shape'], 'ms': median(times[i]), 'flops': v['flops'], **extra})


def bench_block(torch, job, at):
    from layers import DecoderBlock, MoDBlock, MoMaFFN, Rows
    torch.manual_seed(13)
    T, S, d = job['T'], job['S'], job['d']
    block = DecoderBlock(d, job['heads'], MoMaFFN(d, job['f'], job['groups']))
    mod_block = at.module(MoDBlock(block, d, job['capacity']))
    x = at.randn(T, d, requires_grad=True)
    dy = at.randn(T, d) * 1e-3
    rows = torch.arange(T, device=at.device)
    ctx = Rows(rows % S, rows - rows % S, at.ids(job['modality']), rows // S, T)
    runs = [backward_round(mod_block, (lambda m=m: m(x, ctx)), x, dy) for m in (block, mod_block)]
    times = interleaved(runs, job['repeats'], at.sync)
    for i, v in enumerate(job['variants']):
        extra = {'ratio_vs_full': ratio(times[i], times[0])} if v['mod'] else {}
        emit({'op': v['op'], 'shape': v['shape'], 'ms': median(times[i]), 'flops': v['flops'], **extra})


def bench_step(torch, job, at):
    from layers import Transformer, decays
    b = job['batch']
    batch = {key: at.ids(b[key]) for key in ('tokens', 'targets', 'positions', 'seg_start', 'modality')}
    batch['seq_len'] = b['seq_len']
    o = job['optimizer']
    runs, losses = [], []
    for i, v in enumerate(job['variants']):
        torch.manual_seed(5 + i)
        model = Transformer(v['config']).to(at.device)
        named = list(model.named_parameters())
        opt = torch.optim.AdamW([{'params': [p for n, p in named if decays(n)], 'weight_decay': o['weight_decay']},
                                 {'params': [p for n, p in named if not decays(n)], 'weight_decay': 0.0}],
                                lr=o['lr'], betas=tuple(o['betas']), eps=o['eps'])
        seen = []
        losses.append(seen)

        def step(model=model, opt=opt, seen=seen):
            opt.zero_grad(set_to_none=True)
            with at.autocast():
                loss = model.loss(batch)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), o['clip_norm'])
            opt.step()
            seen.append(float(loss))
        runs.append(step)
    times = interleaved(runs, job['repeats'], at.sync)
    for i, v in enumerate(job['variants']):
        extra = {'ratio_vs_dense': ratio(times[i], times[v['dense']])} if v.get('dense') is not None else {}
        emit({'op': v['op'], 'shape': v['shape'], 'ms': median(times[i]), 'flops': v['flops'],
              'loss_first': losses[i][0], 'loss_last': losses[i][-1], **extra})


def modality_pattern(T):
    """Modality of row t as bench/layers.js's modalityPattern: half text (0), half image (1), scattered."""
    return [0 if (t * 2654435761) % 97 < 48 else 1 for t in range(T)]


def routed_rows(modality, groups, capacity=1.0):
    """Rows expert-choice routing hands to the experts (SPEC §2): per group, k = min(n, ceil(c n / E))
    rows for each of its E experts; a one-expert group takes every row of its modalities."""
    rows = 0
    for mods, experts in groups:
        n = sum(1 for m in modality if m in mods)
        rows += n if experts == 1 else experts * min(n, math.ceil(capacity * n / experts))
    return rows


def ffn_layers_job(T, repeats):
    """bench/layers.js's FFN-layer job at T rows (d 1024, f 4096): dense, moma 4t4i, moe 8x; FLOPs as it counts them."""
    d, f = 1024, 4096
    modality = modality_pattern(T)
    variants = [{'op': 'layer.dense_swiglu.fwd_bwd', 'shape': f'T{T} d{d} f{f}', 'groups': None, 'flops': 3 * 6 * T * d * f}]
    for op, groups in (('layer.moma_4t4i.fwd_bwd', [[[0], 4], [[1], 4]]), ('layer.moe_8x.fwd_bwd', [[[0, 1], 8]])):
        rows = routed_rows(modality, groups)
        variants.append({'op': op, 'shape': f'T{T} d{d} f{f} c1', 'groups': groups, 'flops': 3 * (6 * rows * d * f + 2 * T * d * 8)})
    return {'kind': 'ffn', 'T': T, 'd': d, 'f': f, 'repeats': repeats, 'modality': modality, 'variants': variants}


def device_info(torch, at):
    if not at.cuda:
        return {}
    p = torch.cuda.get_device_properties(at.device)
    return {'gpu': p.name, 'compute_capability': f'{p.major}.{p.minor}', 'torch_cuda': torch.version.cuda}


def main():
    parser = argparse.ArgumentParser()
    jobs = parser.add_mutually_exclusive_group(required=True)
    jobs.add_argument('--spec', help='the job file bench/torch.js writes')
    jobs.add_argument('--layers', type=int, metavar='T', help="bench/layers.js's FFN layers at T rows, without Node")
    parser.add_argument('--repeats', type=int, default=5, help='timed rounds for --layers (default 5)')
    parser.add_argument('--device', default='cpu', help='cpu (default), cuda or cuda:N')
    parser.add_argument('--dtype', default='float32', choices=['float32', 'bfloat16'], help='compute dtype (default float32)')
    parser.add_argument('--threads', type=int, default=None, help='CPU threads for --layers (default: all)')
    args = parser.parse_args()
    if args.spec:
        with open(args.spec) as f:
            spec = json.load(f)
    else:
        spec = {'threads': args.threads or os.cpu_count()}
    threads = int(spec['threads'])
    decided = configure_threads(threads)
    import torch
    import torch.nn.functional as F
    torch.set_num_threads(threads)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    at = Placement(torch, args.device, args.dtype)
    if at.cuda and not torch.cuda.is_available():
        raise SystemExit(f'run.py: --device {args.device}, but torch {torch.__version__} sees no CUDA device')
    if spec.get('kernels') and at.cuda:
        raise SystemExit('run.py: the "kernels" jobs are CPU only (bench/reference/gpu_kernels.py times the GPU kernels)')
    emit({'info': {'torch': torch.__version__, 'device': str(at.device), 'dtype': args.dtype, **device_info(torch, at),
                   'threads': torch.get_num_threads(), 'blas': blas_library(),
                   'openblas_core': openblas_core(os.environ.copy()), **decided,
                   'cpu_capability': cpu_capability(torch)}})
    torch.set_grad_enabled(True)
    if args.layers:
        bench_ffn(torch, ffn_layers_job(args.layers, args.repeats), at)
        return
    bench_ceiling(torch)
    if spec.get('kernels'):
        bench_kernels(torch, F)
    for job in spec['jobs']:
        {'ffn': bench_ffn, 'block': bench_block, 'step': bench_step}[job['kind']](torch, job, at)


if __name__ == '__main__':
    main()
