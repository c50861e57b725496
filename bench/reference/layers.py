"""PyTorch versions of moma's layers, written from SPEC.md §1-3, used only by `npm run bench -- torch`
to put moma's times next to PyTorch's for the same math on the same machine (never by tests).

Parameter names and layouts follow moma's (lib/model/layers.ts, lib/moe/moma_ffn.ts), so a moma
checkpoint's tensors load by name: Linear weights [out, in]; MoMaFFN experts stacked as
w1, w3 [E, d, f], w2 [E, f, d] and router [d, E] (columns of single-expert groups unused).

- SwiGLU FFN: (SiLU(v W1) * (v W3)) W2.
- MoMaFFN: modality groups; sigmoid expert-choice routing inside each group with capacity
  k_g = min(n_g, ceil(c n_g / E_g)), ties to the smaller row (stable sort); y_t = sum over the
  experts that selected t of s_te * FFN_e(v_t); a one-expert group has no router (weight 1);
  padding rows (modality -1) are never routed. `moe 8x` is one group holding both modalities.
- Attention: per-head LayerNorm QK-norm (eps 1e-5), RoPE (theta 10000, rotate-half, position
  inside the sequence), causal softmax inside documents. Rows are batched per sequence, padded to
  the longest (MoD passes a subset of rows), and masked by document and position.
- Block: swin (h = x + RMSNorm(Attn(x)), y = h + RMSNorm(FFN(h))) or pre norm.
- MoD block: gate sigmoid(x w), the ceil(c_d T_valid) non-padding rows with the largest gate run
  the block; selected rows become x + g (block(x) - x).
- Transformer: embedding, blocks (MoD at layers 0, i, 2i, ...), final RMSNorm, untied LM head;
  loss = mean next-token cross-entropy over non-padding targets + z_loss mean(lse^2).

Every tensor made inside follows its input's device (and, for RoPE's tables, dtype), so a module
moved with .to(device, dtype) runs there: run.py --device cuda --dtype bfloat16 times them on a GPU.
"""
import math

import torch
import torch.nn.functional as F

EPS = 1e-5


def swiglu_ffn(v, w1, w3, w2):
    return (F.silu(v @ w1) * (v @ w3)) @ w2


def rms_norm(x, w):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS) * w


def rope(x, positions, theta):
    """x [N, H, D], rotate-half: y[i] = x[i] c - x[i+h] s, y[i+h] = x[i+h] c + x[i] s."""
    half = x.shape[-1] // 2
    inv_freq = theta ** (-torch.arange(half, dtype=torch.float64, device=x.device) * 2 / x.shape[-1])
    angle = positions.to(torch.float64).unsqueeze(1) * inv_freq.unsqueeze(0)
    cos, sin = angle.cos().to(x.dtype).unsqueeze(1), angle.sin().to(x.dtype).unsqueeze(1)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class DenseFFN(torch.nn.Module):
    """The dense FFN of the layer benchmark (moma's SwiGLUFFN): w1, w3 [d, f], w2 [f, d]."""

    def __init__(self, d, f):
        super().__init__()
        self.w1 = torch.nn.Parameter(torch.randn(d, f) * 0.02)
        self.w3 = torch.nn.Parameter(torch.randn(d, f) * 0.02)
        self.w2 = torch.nn.Parameter(torch.randn(f, d) * 0.02)

    def forward(self, v, modality=None):
        return swiglu_ffn(v, self.w1, self.w3, self.w2)


class Linear(torch.nn.Module):
    def __init__(self, n_in, n_out):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(n_out, n_in) * 0.02)

    def forward(self, x):
        return F.linear(x, self.weight)


class SwiGLU(torch.nn.Module):
    """The dense FFN inside the Transformer (moma's SwiGLU module: Linear w1, w3, w2)."""

    def __init__(self, d, f):
        super().__init__()
        self.w1, self.w3, self.w2 = Linear(d, f), Linear(d, f), Linear(f, d)

    def forward(self, v, modality=None):
        return self.w2(F.silu(self.w1(v)) * self.w3(v))


class MoMaFFN(torch.nn.Module):
    """groups: list of (modality ids, experts)."""

    def __init__(self, d, f, groups, capacity=1.0):
        super().__init__()
        self.groups = [(tuple(mods), e) for mods, e in groups]
        self.capacity = capacity
        E = sum(e for _, e in self.groups)
        self.w1 = torch.nn.Parameter(torch.randn(E, d, f) * 0.02)
        self.w3 = torch.nn.Parameter(torch.randn(E, d, f) * 0.02)
        self.w2 = torch.nn.Parameter(torch.randn(E, f, d) * 0.02)
        self.router = torch.nn.Parameter(torch.randn(d, E) * 0.02)

    def route(self, v, modality):
        """Per expert: (rows it selected, their gates) — the expert-choice routing of SPEC §2."""
        logits = v @ self.router
        picks = []
        first = 0
        for mods, e in self.groups:
            member = torch.zeros_like(modality, dtype=torch.bool)
            for m in mods:
                member |= modality == m
            rows = member.nonzero(as_tuple=True)[0]
            n = rows.numel()
            if n == 0:
                pass
            elif e == 1:
                picks.append((first, rows, None))
            else:
                scores = torch.sigmoid(logits.index_select(0, rows)[:, first:first + e])
                k = min(n, math.ceil(self.capacity * n / e))
                order = torch.sort(scores.detach().t(), dim=1, descending=True, stable=True).indices[:, :k]
                for j in range(e):
                    picks.append((first + j, rows.index_select(0, order[j]), scores[:, j].index_select(0, order[j])))
            first += e
        return picks

    def forward(self, v, modality):
        # unbind: one stacked gradient per weight in the backward (indexing w1[e] per expert
        # would zero-fill and accumulate a full [E, d, f] gradient for every expert)
        w1, w3, w2 = self.w1.unbind(0), self.w3.unbind(0), self.w2.unbind(0)
        outs, dest = [], []
        for e, rows, gate in self.route(v, modality):
            out = swiglu_ffn(v.index_select(0, rows), w1[e], w3[e], w2[e])
            outs.append(out if gate is None else out * gate.unsqueeze(1))
            dest.append(rows)
        if not outs:
            return torch.zeros_like(v)
        out = torch.cat(outs)  # under autocast the experts' dtype, not the residual stream's
        return out.new_zeros(v.shape).index_add(0, torch.cat(dest), out)


class HeadNorm(torch.nn.Module):
    """LayerNorm over the head dimension with a weight and bias per head [H, D]."""

    def __init__(self, heads, head_dim):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(heads, head_dim))
        self.bias = torch.nn.Parameter(torch.zeros(heads, head_dim))

    def forward(self, x):
        return F.layer_norm(x, x.shape[-1:], eps=EPS) * self.weight + self.bias


class Rows:
    """What a block needs besides its input rows: positions, document (segment start) and
    modality per row, and how the rows batch for attention (sequence index per row)."""

    def __init__(self, positions, seg_start, modality, sequence, valid_rows):
        self.positions, self.seg_start, self.modality, self.sequence = positions, seg_start, modality, sequence
        self.valid_rows = valid_rows

    def subset(self, rows):
        pick = lambda t: t.index_select(0, rows)
        return Rows(pick(self.positions), pick(self.seg_start), pick(self.modality), pick(self.sequence), rows.numel())


def batched_attention(q, k, v, ctx):
    """Causal attention inside documents for rows [N, H, D] grouped by ctx.sequence (rows of one
    sequence contiguous and in increasing position): pads each sequence to the longest."""
    N, H, D = q.shape
    seq = ctx.sequence
    counts = torch.bincount(seq - seq.min())
    B, L = counts.numel(), int(counts.max())
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.arange(N, device=q.device) - starts[seq - seq.min()]
    flat = (seq - seq.min()) * L + slot
    if B * L == N:
        pad = lambda t: t.view(B, L, H, D)
        doc = ctx.seg_start.view(B, L)
    else:
        pad = lambda t: t.new_zeros(B * L, H, D).index_copy(0, flat, t).view(B, L, H, D)
        doc = ctx.seg_start.new_full((B * L,), -1).index_copy(0, flat, ctx.seg_start).view(B, L)
    qb, kb, vb = (pad(t).transpose(1, 2) for t in (q, k, v))  # [B, H, L, D]
    causal = torch.ones(L, L, dtype=torch.bool, device=q.device).tril()
    allowed = (doc.unsqueeze(2) == doc.unsqueeze(1)) & causal  # [B, L, L]; padding attends to padding
    scores = (qb @ kb.transpose(-1, -2)) * (1.0 / math.sqrt(D))
    o = torch.softmax(scores.masked_fill(~allowed.unsqueeze(1), float('-inf')), dim=-1) @ vb
    o = o.transpose(1, 2).reshape(B * L, H, D)
    return o if B * L == N else o.index_select(0, flat)


class Attention(torch.nn.Module):
    def __init__(self, d, heads, rope_theta=10000.0):
        super().__init__()
        self.h, self.hd, self.theta = heads, d // heads, rope_theta
        self.wq, self.wk, self.wv, self.wo = Linear(d, d), Linear(d, d), Linear(d, d), Linear(d, d)
        self.q_norm, self.k_norm = HeadNorm(heads, self.hd), HeadNorm(heads, self.hd)

    def forward(self, x, ctx):
        N = x.shape[0]
        split = lambda t: t.view(N, self.h, self.hd)
        q = rope(self.q_norm(split(self.wq(x))), ctx.positions, self.theta)
        k = rope(self.k_norm(split(self.wk(x))), ctx.positions, self.theta)
        o = batched_attention(q, k, split(self.wv(x)), ctx)
        return self.wo(o.reshape(N, -1))


class RMSNorm(torch.nn.Module):
    def __init__(self, d):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(d))

    def forward(self, x):
        return rms_norm(x, self.weight)


class DecoderBlock(torch.nn.Module):
    def __init__(self, d, heads, ffn, norm='swin', rope_theta=10000.0):
        super().__init__()
        self.attn = Attention(d, heads, rope_theta)
        self.attn_norm = RMSNorm(d)
        self.ffn = ffn
        self.ffn_norm = RMSNorm(d)
        self.norm = norm

    def forward(self, x, ctx):
        if self.norm == 'pre':
            h = x + self.attn(self.attn_norm(x), ctx)
            return h + self.ffn(self.ffn_norm(h), ctx.modality)
        h = x + self.attn_norm(self.attn(x, ctx))
        return h + self.ffn_norm(self.ffn(h, ctx.modality))


class MoDBlock(torch.nn.Module):
    def __init__(self, block, d, capacity):
        super().__init__()
        self.mod_router = Linear(d, 1)
        self.block = block
        self.capacity = capacity

    def forward(self, x, ctx):
        gate = torch.sigmoid(self.mod_router(x)).view(-1)
        k = min(ctx.valid_rows, math.ceil(self.capacity * ctx.valid_rows))
        if k == 0:
            return x
        key = gate.detach().masked_fill(ctx.modality < 0, float('-inf'))
        rows = torch.sort(torch.sort(key, descending=True, stable=True).indices[:k]).values
        xs = x.index_select(0, rows)
        ys = self.block(xs, ctx.subset(rows))
        return x.index_add(0, rows, (ys - xs) * gate.index_select(0, rows).unsqueeze(1))


def make_ffn(cfg):
    """The FFN of a moma FFNConfig (kind dense or moe) for modality names cfg['modalities']."""
    ffn = cfg['ffn']
    if ffn['kind'] == 'dense':
        return SwiGLU(cfg['dModel'], ffn['dFF'])
    names = cfg.get('modalities') or ['text', 'image']
    assert ffn.get('routing', 'expert-choice') == 'expert-choice' and ffn.get('router', 'sigmoid') == 'sigmoid'
    assert not ffn.get('gumbel'), 'the reference has no Gumbel routing'
    groups = []
    for g in ffn['groups']:
        mods = g['modality'] if isinstance(g['modality'], list) else [g['modality']]
        groups.append(([names.index(m) for m in mods], g['experts']))
    return MoMaFFN(cfg['dModel'], ffn['dFF'], groups, ffn.get('capacityFactor', 1.0))


class Transformer(torch.nn.Module):
    """cfg: moma's TransformerConfig (JSON)."""

    def __init__(self, cfg):
        super().__init__()
        d, V = cfg['dModel'], cfg['vocabSize']
        self.embed = torch.nn.Embedding(V, d)
        mod = cfg.get('mod')
        layers = []
        for i in range(cfg['layers']):
            block = DecoderBlock(d, cfg['heads'], make_ffn(cfg), cfg.get('norm', 'swin'), cfg.get('ropeTheta', 10000.0))
            if mod is not None and i % mod.get('interval', 2) == 0:
                block = MoDBlock(block, d, mod.get('capacity', 0.25))
            layers.append(block)
        self.layers = torch.nn.ModuleList(layers)
        self.norm = RMSNorm(d)
        self.lm_head = Linear(d, V)
        self.z_loss = cfg.get('zLoss', 0.0)

    def loss(self, batch):
        """batch: tokens, targets (-1 = padding), positions, seg_start, modality (-1 = padding), seq_len."""
        T = batch['tokens'].numel()
        ctx = Rows(batch['positions'], batch['seg_start'], batch['modality'],
                   torch.arange(T, device=batch['tokens'].device) // batch['seq_len'],
                   int((batch['modality'] >= 0).sum()))
        x = self.embed(batch['tokens'])
        for block in self.layers:
            x = block(x, ctx)
        logits = self.lm_head(self.norm(x))
        valid = batch['targets'] >= 0
        lse = torch.logsumexp(logits, dim=-1)
        nll = lse - logits.gather(1, batch['targets'].clamp(min=0).unsqueeze(1)).squeeze(1)
        n = valid.sum().clamp(min=1)
        loss = (nll * valid).sum() / n
        if self.z_loss > 0:
            loss = loss + self.z_loss * (lse.pow(2) * valid).sum() / n
        return loss


def decays(name):
    """moma's AdamW default: weight decay on every parameter whose name has no norm, bias or embed."""
    return not any(s in name for s in ('norm', 'bias', 'embed'))
