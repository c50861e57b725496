"""PyTorch on the same GPU at the shapes of moma's kernel bench (native/bench/), for
scripts/gpu-check.sh: what moma's CUDA kernels are worth next to cuBLAS, torch's flash attention and
torch's copies. Standalone: torch only (the GPU machine has no Node).

  python3 bench/reference/gpu_kernels.py [--device cuda|cpu] [--tiny] [--only SUBSTRING...]

--tiny shrinks every shape (the dry run on a CPU); --only keeps the ops whose name contains one of
the substrings. Prints JSON lines: first {"meta": {...}} (date, device, driver, CUDA, torch, L2),
then per measurement {"device": "torch", "op", "shape", "ms", "rate", "unit"}, or {"device":
"torch", "op", "shape", "skipped": why} when this torch lacks what the op needs. A part that
raises (copies, GEMMs, dispatch / combine, attention, transformer kernels) is reported on stderr,
the others still run, and the exit status is 1. Op and shape
strings are moma's where the computation is the same (gemm_bf16 "4096x4096x4096" is M x N x K;
attention "N8192xH16xD64xseg4096"); scripts/gpu_summary.py pairs the rest (a grouped expert GEMM
against the dense GEMM of equal FLOPs, dispatch against index_select, combine against index_add)
in its one table.

Timing (METHOD.md): CUDA events around a batch of calls after three warm-up calls; the batch is
sized to about 1 ms, and the median over batches is reported (at least 7, more while under
~0.25 s). When one call's inputs would fit in twice the L2 cache, the calls rotate over enough
input sets to overflow it, so that the numbers are of memory and not of the cache. On the CPU the
same with a host clock. Rates: GEMMs 2 M N K; attention 4 D H sum_t L_t forward (L_t the keys row t
sees, causal inside segments), 2.5x that backward, as native/bench/cuda_nn_bench.cc counts; the
memory-bound ops GB/s of compulsory traffic (each input read once, each output written once).
"""
import argparse
import datetime
import json
import math
import socket
import subprocess
import sys
import time

import torch
import torch.nn.functional as F


def emit(record):
    print(json.dumps(record), flush=True)


class Timer:
    """Median ms per call of call(i) (i: the call's index, to rotate input sets)."""

    def __init__(self, device):
        self.cuda = device.type == 'cuda'

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def batch_ms(self, call, start, count):
        if self.cuda:
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            for i in range(count):
                call(start + i)
            end.record()
            end.synchronize()
            return begin.elapsed_time(end)
        t0 = time.perf_counter()
        for i in range(count):
            call(start + i)
        return (time.perf_counter() - t0) * 1e3

    def median_ms(self, call, budget_ms=250.0):
        for i in range(3):
            call(i)
        self.sync()
        one = max(self.batch_ms(call, 3, 1), 1e-3)
        count = max(1, min(200, int(1.0 / one)))
        samples, spent, index = [], 0.0, 4
        while len(samples) < 7 or (spent < budget_ms and len(samples) < 50):
            ms = self.batch_ms(call, index, count)
            index += count
            spent += ms
            samples.append(ms / count)
        samples.sort()
        return samples[len(samples) // 2]


class Bench:
    def __init__(self, device, tiny, only):
        self.device, self.tiny, self.only = device, tiny, only
        self.timer = Timer(device)
        self.l2 = getattr(torch.cuda.get_device_properties(device), 'L2_cache_size', 50 << 20) if device.type == 'cuda' else 0
        self.gen = torch.Generator(device=device)
        self.gen.manual_seed(2024)

    def wanted(self, op):
        return not self.only or any(s in op for s in self.only)

    def sets(self, bytes_per_call):
        """Input sets to rotate over: enough that they overflow twice the L2 (at most 8)."""
        return max(1, min(8, math.ceil(2 * self.l2 / max(bytes_per_call, 1))))

    def randn(self, *shape, dtype=torch.float32):
        return torch.randn(*shape, generator=self.gen, device=self.device, dtype=torch.float32).to(dtype)

    def uniform(self, *shape, dtype=torch.float32):
        return (torch.rand(*shape, generator=self.gen, device=self.device) * 2 - 1).to(dtype)

    def report(self, op, shape, ms, amount, unit):
        scale = 1e9 if unit == 'TFLOP/s' else 1e6  # amount per ms -> unit
        emit({'device': 'torch', 'op': op, 'shape': shape, 'ms': ms, 'rate': amount / ms / scale, 'unit': unit})

    def skipped(self, op, shape, why):
        emit({'device': 'torch', 'op': op, 'shape': shape, 'skipped': why})


def gemms(b):
    """cuBLAS through torch.matmul: bf16 (tensor cores) and float32 with TF32 off (the router)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    s = 16 if b.tiny else 1
    bf16 = [(4096, 4096, 4096), (8192, 4096, 4096), (8192, 4096, 1024), (8192, 1024, 4096), (32768, 4096, 1024),
            (32768, 1024, 4096)]
    f32 = [(4096, 4096, 4096), (8192, 4096, 1024), (8192, 8, 1024), (32768, 8, 1024)]
    for op, dtype, shapes in (('gemm_bf16', torch.bfloat16, bf16), ('gemm_f32in', torch.float32, f32)):
        if not b.wanted(op):
            continue
        for M, N, K in shapes:
            M, N, K = M // s, max(N // s, 8), K // s
            size = torch.finfo(dtype).bits // 8
            sets = b.sets(size * (M * K + K * N))
            a = [b.uniform(M, K, dtype=dtype) for _ in range(sets)]
            w = [b.uniform(K, N, dtype=dtype) for _ in range(sets)]
            ms = b.timer.median_ms(lambda i: torch.matmul(a[i % sets], w[i % sets]))
            b.report(op, f'{M}x{N}x{K}', ms, 2.0 * M * N * K, 'TFLOP/s')
            del a, w
    # the expert weight gradient's dense twin: dW [d, f] = x^T [d, T] @ h [T, f], x read transposed
    if b.wanted('gemm_bf16_wgrad'):
        for T in (8192, 32768):
            T, d, f = T // s, 1024 // s, 4096 // s
            sets = b.sets(2 * (T * d + T * f))
            x = [b.uniform(T, d, dtype=torch.bfloat16) for _ in range(sets)]
            h = [b.uniform(T, f, dtype=torch.bfloat16) for _ in range(sets)]
            ms = b.timer.median_ms(lambda i: torch.matmul(x[i % sets].t(), h[i % sets]))
            b.report('gemm_bf16_wgrad', f'{d}x{f}x{T}', ms, 2.0 * T * d * f, 'TFLOP/s')
            del x, h


def copies(b):
    """The bandwidth ceiling (device-to-device copy) and moma's memory-bound kernels' shapes."""
    s = 64 if b.tiny else 1
    if b.wanted('ceiling.copy_d2d'):
        n = (1 << 30) // s
        src = torch.ones(n, dtype=torch.uint8, device=b.device)
        dst = torch.empty_like(src)
        ms = b.timer.median_ms(lambda i: dst.copy_(src))
        b.report('ceiling.copy_d2d', '1GiB' if s == 1 else f'{n}B', ms, 2.0 * n, 'GB/s')
        del src, dst
    # native/bench/cuda_bench.cc's [32768, 1024] float32 tensors (bytes counted as it counts them)
    rows, cols = 32768 // s, 1024
    n = rows * cols
    x = b.uniform(rows, cols) * 4
    y = torch.empty_like(x)
    x16 = x.to(torch.bfloat16)
    y16 = torch.empty_like(x16)
    bias = b.uniform(cols)
    idx = (torch.arange(rows, device=b.device) * 7919) % rows
    rc = f'{rows}x{cols}'
    cases = [
        ('fill_f32', rc, 4.0 * n, lambda i: y.fill_(0.5)),
        ('cast_f32_bf16', rc, 6.0 * n, lambda i: y16.copy_(x)),
        ('unary_silu_f32', rc, 8.0 * n, lambda i: torch.nn.functional.silu(x)),
        ('unary_silu_bf16', rc, 4.0 * n, lambda i: torch.nn.functional.silu(x16)),
        ('binary_add_bcast_f32', f'{rc} + {cols}', 8.0 * n + 4.0 * cols, lambda i: torch.add(x, bias, out=y)),
        ('softmax_rows_f32', rc, 8.0 * n, lambda i: torch.softmax(x, -1)),
        ('reduce_sum_rows_f32', rc, 4.0 * n + 4.0 * rows, lambda i: x.sum(-1)),
        ('strided_copy_transpose', f'{rows // 8}x{cols * 8}->{cols * 8}x{rows // 8}', 8.0 * n,
         lambda i: y.view(cols * 8, rows // 8).copy_(x.view(rows // 8, cols * 8).t())),
        ('index_select_rows_f32', rc, 8.0 * n + 8.0 * rows, lambda i: torch.index_select(x, 0, idx, out=y)),
    ]
    for op, shape, nbytes, fn in cases:
        if b.wanted(op):
            b.report(op, shape, b.timer.median_ms(fn), nbytes, 'GB/s')
    del x, y, x16, y16


def dispatch_combine(b):
    """Dispatch and combine at the 435M shapes (d 1024, T rows routed once each on average):
    gather x[T, d] by a permutation of the rows (index_select), scatter the expert rows back by
    index_add (combine's accumulation) and by index_copy (the plain scatter)."""
    s = 32 if b.tiny else 1
    for T in (8192 // s, 32768 // s):
        d = 1024 // min(s, 4)
        perm = torch.randperm(T, generator=b.gen, device=b.device)
        sets = b.sets(2 * T * d * 2)
        xs = [b.uniform(T, d, dtype=torch.bfloat16) for _ in range(sets)]
        out = [torch.zeros(T, d, dtype=torch.bfloat16, device=b.device) for _ in range(sets)]
        moved = 2.0 * d * (T + T) + 8.0 * T  # rows read once, rows written once, int64 indices
        shape = f'{T}x{d}'
        if b.wanted('index_select_rows_bf16'):
            ms = b.timer.median_ms(lambda i: torch.index_select(xs[i % sets], 0, perm, out=out[i % sets]))
            b.report('index_select_rows_bf16', shape, ms, moved, 'GB/s')
        if b.wanted('index_add_rows_bf16'):
            ms = b.timer.median_ms(lambda i: out[i % sets].index_add_(0, perm, xs[i % sets]))
            b.report('index_add_rows_bf16', shape, ms, moved, 'GB/s')
        if b.wanted('index_copy_rows_bf16'):
            ms = b.timer.median_ms(lambda i: out[i % sets].index_copy_(0, perm, xs[i % sets]))
            b.report('index_copy_rows_bf16', shape, ms, moved, 'GB/s')
        del xs, out


def attention(b):
    """torch's flash SDPA, causal, bf16, [B = N / seg, H, seg, D] (segments of seg rows = moma's
    packed documents of equal length): forward, forward + backward, and backward as their
    difference."""
    ops = ('attention_fwd_bf16_tc', 'attention_fwd_bwd_bf16_tc', 'attention_bwd_bf16_tc')
    shapes = [(8192, 16, D, S) for D in (64, 128) for S in (4096, 1024)]
    if b.tiny:
        shapes = [(512, 2, 64, 256), (512, 2, 128, 256)]
    for N, H, D, S in shapes:
        shape = f'N{N}xH{H}xD{D}xseg{S}'
        if not any(b.wanted(op) for op in ops):
            continue
        if not hasattr(F, 'scaled_dot_product_attention'):
            for op in ops:
                b.skipped(op, shape, f'torch {torch.__version__} has no scaled_dot_product_attention')
            continue
        B = N // S
        fwd_flops = 4.0 * D * H * B * S * (S + 1) / 2
        sets = b.sets(3 * 2 * N * H * D)
        qkv = [[b.randn(B, S, H, D, dtype=torch.bfloat16).transpose(1, 2).requires_grad_() for _ in range(3)]
               for _ in range(sets)]
        dout = b.randn(B, S, H, D, dtype=torch.bfloat16).transpose(1, 2)

        def forward(i):
            q, k, v = qkv[i % sets]
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)

        def forward_backward(i):
            q, k, v = qkv[i % sets]
            torch.autograd.grad(F.scaled_dot_product_attention(q, k, v, is_causal=True), (q, k, v), dout)

        with flash_only(b.device):
            with torch.no_grad():
                fwd = b.timer.median_ms(forward)
            both = b.timer.median_ms(forward_backward)
        b.report(ops[0], shape, fwd, fwd_flops, 'TFLOP/s')
        b.report(ops[1], shape, both, 3.5 * fwd_flops, 'TFLOP/s')
        b.report(ops[2], shape, max(both - fwd, 1e-6), 2.5 * fwd_flops, 'TFLOP/s')
        del qkv, dout


def flash_only(device):
    """On CUDA, SDPA restricted to the flash kernel (an error rather than a silent fallback)."""
    if device.type == 'cuda':
        from torch.nn.attention import SDPBackend, sdpa_kernel
        return sdpa_kernel(SDPBackend.FLASH_ATTENTION)
    import contextlib
    return contextlib.nullcontext()


def transformer_kernels(b):
    """RMSNorm [32768, 1024] (bf16, f32) and cross-entropy [8192, 65536] bf16 with 5% ignored
    rows, the shapes of native/bench/cuda_nn_bench.cc."""
    s = 32 if b.tiny else 1
    if b.wanted('nn.rmsnorm'):
        T, d = 32768 // s, 1024
        w = torch.ones(d, device=b.device)
        for dtype, tag, size in ((torch.bfloat16, 'bf16', 2), (torch.float32, 'f32', 4)):
            x = b.randn(T, d, dtype=dtype)
            if hasattr(F, 'rms_norm'):
                fn = lambda i: F.rms_norm(x, (d,), w.to(dtype), 1e-5)
            else:
                fn = lambda i: x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-5).to(dtype) * w.to(dtype)
            b.report('nn.rmsnorm', f'{T}x{d} {tag}', b.timer.median_ms(fn), 2.0 * size * T * d + 4.0 * T + 4.0 * d, 'GB/s')
            del x
    if b.wanted('nn.cross_entropy'):
        N, V = 8192 // s, 65536 // s
        logits = b.randn(N, V, dtype=torch.bfloat16) * 2
        targets = torch.randint(0, V, (N,), generator=b.gen, device=b.device)
        targets[torch.rand(N, generator=b.gen, device=b.device) < 0.05] = -1
        fn = lambda i: F.cross_entropy(logits, targets, ignore_index=-1, reduction='none')
        b.report('nn.cross_entropy', f'{N}x{V} bf16', b.timer.median_ms(fn), 2.0 * N * V + 12.0 * N, 'GB/s')
        del logits


def meta(device):
    info = {'date': datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ'),
            'host': socket.gethostname(), 'torch': torch.__version__, 'device': str(device)}
    if device.type == 'cuda':
        p = torch.cuda.get_device_properties(device)
        info.update({'gpu': p.name, 'compute_capability': f'{p.major}.{p.minor}', 'multiprocessors': p.multi_processor_count,
                     'memory_gib': round(p.total_memory / 2 ** 30, 1), 'l2_bytes': p.L2_cache_size,
                     'torch_cuda': torch.version.cuda, 'driver': nvidia_driver()})
    return info


def nvidia_driver():
    try:
        out = subprocess.run(['nvidia-smi', '--query-gpu=driver_version', '--format=csv,noheader'], capture_output=True,
                             text=True, timeout=20)
        return out.stdout.split('\n')[0].strip() or None
    except (OSError, subprocess.TimeoutExpired):
        return None


def main():
    parser = argparse.ArgumentParser(description='PyTorch at the shapes of moma_kernel_bench, JSON lines on stdout')
    parser.add_argument('--device', default='cuda', help='cuda, cuda:N or cpu (default cuda)')
    parser.add_argument('--tiny', action='store_true', help='small shapes: the dry run on a CPU')
    parser.add_argument('--only', nargs='*', default=[], help='keep only ops whose name contains one of these')
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise SystemExit(f'gpu_kernels.py: torch {torch.__version__} sees no CUDA device')
    if device.type == 'cuda':
        torch.cuda.set_device(device)
    emit({'meta': meta(device)})
    b = Bench(device, args.tiny, args.only)
    failed = []
    for part in (copies, gemms, dispatch_combine, attention, transformer_kernels):
        try:
            part(b)
        except RuntimeError as e:  # the other parts still run; the exit status says it
            failed.append(part.__name__)
            print(f'gpu_kernels.py: {part.__name__}: {e}', file=sys.stderr, flush=True)
            if device.type == 'cuda':
                torch.cuda.empty_cache()
    if failed:
        raise SystemExit(f"gpu_kernels.py: failed: {', '.join(failed)}")


if __name__ == '__main__':
    main()
