"""Times PyTorch's version of moma's benchmarks (same shapes, same math) and prints one JSON
object per line: {"op", "shape", "ms", "torch"}. Called by bench/run.js, which pairs each op with
moma's and reports the time ratio. Times are medians of repeats after a warm-up, forward +
backward where the op name says so.

  python3 bench/reference/run.py layers --T 8192
  python3 bench/reference/run.py kernels
  python3 bench/reference/run.py train-step --config '{"vocab":517,"d":128,"layers":3,"heads":4,"f":344,"ffn":"4t4i","batch":8,"seq":256}'
"""
import argparse
import json
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from layers import DenseFFN, MoMaFFN, Transformer, rms_norm  # noqa: E402

GROUPS = {
    'dense': None,
    '4t4i': [((0,), 4), ((1,), 4)],
    '8x': [((0, 1), 8)],
    '1t1i': [((0,), 1), ((1,), 1)],
}


def emit(op, shape, ms, **extra):
    print(json.dumps({'op': op, 'shape': shape, 'ms': ms, 'torch': torch.__version__, **extra}), flush=True)


def median(xs):
    s = sorted(xs)
    return s[len(s) // 2]


def timed(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return median(times)


def modality_pattern(T):
    # the same rows as bench/layers.js: (t * 2654435761) % 97 < 48 -> text
    return torch.tensor([0 if (t * 2654435761) % 97 < 48 else 1 for t in range(T)], dtype=torch.int64)


def bench_layers(T, repeats):
    d, f = 1024, 4096
    torch.manual_seed(11)
    x = torch.randn(T, d, requires_grad=True)
    dy = torch.randn(T, d) * 1e-3
    modality = modality_pattern(T)
    layers = [('layer.dense_swiglu.fwd_bwd', DenseFFN(d, f)),
              ('layer.moma_4t4i.fwd_bwd', MoMaFFN(d, f, GROUPS['4t4i'])),
              ('layer.moe_8x.fwd_bwd', MoMaFFN(d, f, GROUPS['8x']))]
    times = [[] for _ in layers]
    for round_ in range(repeats + 1):  # interleaved rounds; round 0 is the warm-up
        for i, (_, layer) in enumerate(layers):
            t0 = time.perf_counter()
            y = layer(x, modality)
            y.backward(dy)
            ms = (time.perf_counter() - t0) * 1e3
            x.grad = None
            layer.zero_grad(set_to_none=True)
            if round_ > 0:
                times[i].append(ms)
    for i, (op, _) in enumerate(layers):
        extra = {}
        if i > 0:
            extra['ratio_vs_dense'] = median([t / times[0][k] for k, t in enumerate(times[i])])
        emit(op, f'T{T} d{d} f{f}' + (' c1' if i > 0 else ''), median(times[i]), **extra)


def bench_kernels(repeats):
    torch.manual_seed(3)
    x = torch.randn(32768, 1024)
    w = torch.ones(1024)
    emit('nn.rmsnorm', '32768x1024', timed(lambda: rms_norm(x, w), repeats))

    # attention: 4096 rows as 4 documents of 1024, 16 heads of 64, causal, forward and backward
    B, S, H, D = 4, 1024, 16, 64
    q, k, v = (torch.randn(B, H, S, D, requires_grad=True) for _ in range(3))
    causal = torch.ones(S, S, dtype=torch.bool).tril()
    def attn():
        s = (q @ k.transpose(-1, -2)) / math.sqrt(D)
        return torch.softmax(s.masked_fill(~causal, float('-inf')), -1) @ v
    emit('nn.attention', '4096x16x64 seg1024', timed(lambda: attn(), repeats))
    do = torch.randn(B, H, S, D)
    def attn_fb():
        attn().backward(do)
        for t in (q, k, v):
            t.grad = None
    emit('nn.attention.fwd_bwd', '4096x16x64 seg1024', timed(attn_fb, repeats))

    logits = torch.randn(4096, 65536)
    targets = torch.tensor([-1 if n % 97 == 0 else (n * 7919) % 65536 for n in range(4096)])
    emit('nn.cross_entropy', '4096x65536', timed(lambda: torch.nn.functional.cross_entropy(logits, targets, ignore_index=-1), repeats))

    p = torch.nn.Parameter(torch.randn(1 << 26))
    p.grad = torch.randn(1 << 26)
    opt = torch.optim.AdamW([p], lr=1e-3, weight_decay=0.1, foreach=False)
    emit('nn.adamw', str(1 << 26), timed(opt.step, repeats))


def bench_train_step(cfg, repeats):
    torch.manual_seed(5)
    groups = GROUPS[cfg['ffn']]
    make_ffn = (lambda: DenseFFN(cfg['d'], cfg['f'])) if groups is None else (lambda: MoMaFFN(cfg['d'], cfg['f'], groups))
    model = Transformer(cfg['vocab'], cfg['d'], cfg['layers'], cfg['heads'], make_ffn)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    other = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{'params': decay, 'weight_decay': 0.1}, {'params': other, 'weight_decay': 0.0}], lr=1e-3)
    B, S = cfg['batch'], cfg['seq']
    T = B * S
    image_from = cfg.get('image_from', cfg['vocab'] // 2)
    tokens = torch.randint(0, cfg['vocab'], (T,))
    targets = torch.roll(tokens, -1)
    modality = (tokens >= image_from).long()
    positions = torch.arange(T) % S
    mask = torch.ones(B, S, S, dtype=torch.bool).tril()

    def step():
        opt.zero_grad(set_to_none=True)
        loss = model.loss(tokens, targets, positions, mask, modality)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    emit(f"train_step.{cfg['ffn']}", f"B{B} S{S} d{cfg['d']} L{cfg['layers']} f{cfg['f']} V{cfg['vocab']}", timed(step, repeats))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('suite', choices=['layers', 'kernels', 'train-step'])
    parser.add_argument('--T', type=int, default=8192)
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--threads', type=int, default=os.cpu_count())
    parser.add_argument('--config', type=str, default='{}')
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.suite == 'layers':
        bench_layers(args.T, args.repeats)
    elif args.suite == 'kernels':
        bench_kernels(args.repeats)
    else:
        bench_train_step(json.loads(args.config), args.repeats)


if __name__ == '__main__':
    main()
