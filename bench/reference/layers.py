"""PyTorch implementations of moma's layers, written from SPEC.md, used only by `npm run bench`
to put moma's times next to PyTorch's for the same math on the same machine.

- swiglu_ffn: (SiLU(v W1) * (v W3)) W2
- MoMaFFN: modality groups, sigmoid expert-choice routing with capacity k_g = min(n_g, ceil(c n_g / E_g)),
  y_t = sum over the experts that selected t of s_te * FFN_e(v_t); a group of one expert has no router.
  `moe 8x` is one group holding both modalities.
- Transformer: embedding, swin-norm blocks (QK LayerNorm per head, RoPE, causal attention inside
  documents), the FFN above (or dense), final RMSNorm, untied LM head, cross-entropy; AdamW.
"""
import math
import torch
import torch.nn.functional as F


def swiglu_ffn(v, w1, w3, w2):
    return (F.silu(v @ w1) * (v @ w3)) @ w2


class DenseFFN(torch.nn.Module):
    def __init__(self, d, f):
        super().__init__()
        self.w1 = torch.nn.Parameter(torch.randn(d, f) * 0.02)
        self.w3 = torch.nn.Parameter(torch.randn(d, f) * 0.02)
        self.w2 = torch.nn.Parameter(torch.randn(f, d) * 0.02)

    def forward(self, v, modality=None):
        return swiglu_ffn(v, self.w1, self.w3, self.w2)


class MoMaFFN(torch.nn.Module):
    """groups: list of (modalities tuple, experts)."""

    def __init__(self, d, f, groups, capacity=1.0):
        super().__init__()
        self.groups = groups
        self.capacity = capacity
        self.experts = torch.nn.ModuleList()
        self.routers = torch.nn.ParameterList()
        for _, e in groups:
            self.experts.append(torch.nn.ModuleList([DenseFFN(d, f) for _ in range(e)]))
            self.routers.append(torch.nn.Parameter(torch.randn(d, e) * 0.02))

    def forward(self, v, modality):
        y = torch.zeros_like(v)
        for (mods, e), experts, router in zip(self.groups, self.experts, self.routers):
            mask = torch.zeros_like(modality, dtype=torch.bool)
            for m in mods:
                mask |= modality == m
            rows = mask.nonzero(as_tuple=True)[0]
            n = rows.numel()
            if n == 0:
                continue
            vg = v.index_select(0, rows)
            if e == 1:
                y = y.index_add(0, rows, experts[0](vg))
                continue
            scores = torch.sigmoid(vg @ router)  # [n, e]
            k = min(n, math.ceil(self.capacity * n / e))
            top = torch.topk(scores.detach().t(), k, dim=1).indices  # [e, k] rows chosen by each expert
            for j in range(e):
                sel = top[j]
                out = experts[j](vg.index_select(0, sel)) * scores[sel, j].unsqueeze(1)
                y = y.index_add(0, rows.index_select(0, sel), out)
        return y


def rms_norm(x, w, eps=1e-5):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rope(x, positions, theta=10000.0):
    # x [T, H, hd], rotate-half convention
    hd = x.shape[-1]
    half = hd // 2
    freqs = theta ** (-torch.arange(half, dtype=torch.float32) * 2 / hd)
    ang = positions.float().unsqueeze(1) * freqs.unsqueeze(0)  # [T, half]
    cos, sin = ang.cos().unsqueeze(1), ang.sin().unsqueeze(1)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class Attention(torch.nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.h = heads
        self.hd = d // heads
        self.wq, self.wk, self.wv, self.wo = (torch.nn.Parameter(torch.randn(d, d) * 0.02) for _ in range(4))
        self.qn = torch.nn.LayerNorm([heads, self.hd])
        self.kn = torch.nn.LayerNorm([heads, self.hd])

    def forward(self, x, positions, mask):
        B, S, d = mask.shape[0], mask.shape[1], x.shape[1]
        q = self.qn((x @ self.wq).view(-1, self.h, self.hd))
        k = self.kn((x @ self.wk).view(-1, self.h, self.hd))
        v = (x @ self.wv).view(-1, self.h, self.hd)
        q, k = rope(q, positions), rope(k, positions)
        q, k, v = (t.view(B, S, self.h, self.hd).transpose(1, 2) for t in (q, k, v))
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(self.hd)
        scores = scores.masked_fill(~mask.unsqueeze(1), float('-inf'))
        o = torch.softmax(scores, dim=-1) @ v
        return o.transpose(1, 2).reshape(-1, d) @ self.wo


class Block(torch.nn.Module):
    def __init__(self, d, heads, ffn):
        super().__init__()
        self.attn = Attention(d, heads)
        self.ffn = ffn
        self.na = torch.nn.Parameter(torch.ones(d))
        self.nf = torch.nn.Parameter(torch.ones(d))

    def forward(self, x, positions, mask, modality):
        h = x + rms_norm(self.attn(x, positions, mask), self.na)
        return h + rms_norm(self.ffn(h, modality), self.nf)


class Transformer(torch.nn.Module):
    def __init__(self, vocab, d, layers, heads, make_ffn):
        super().__init__()
        self.emb = torch.nn.Parameter(torch.randn(vocab, d) * 0.02)
        self.blocks = torch.nn.ModuleList([Block(d, heads, make_ffn()) for _ in range(layers)])
        self.norm = torch.nn.Parameter(torch.ones(d))
        self.head = torch.nn.Parameter(torch.randn(d, vocab) * 0.02)

    def loss(self, tokens, targets, positions, mask, modality):
        x = self.emb[tokens]
        for block in self.blocks:
            x = block(x, positions, mask, modality)
        logits = rms_norm(x, self.norm) @ self.head
        return F.cross_entropy(logits, targets, ignore_index=-1)
