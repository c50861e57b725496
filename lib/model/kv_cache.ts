/**
 * KV cache for generation: per attention layer, the keys (after QK-norm and RoPE) and values of
 * every row the layer has processed so far in the current document of one sequence, as float32
 * [heads, L, headDim]. A MoD layer's cache holds only the rows its block ran on, so a new row
 * attends to exactly the keys it would see in a full causal-mode forward (docs/INFERENCE.md).
 *
 * The cache owns its tensors (they leave any tidy scope they were made in); dispose() frees them.
 *
 * cachedAttention computes softmax(q·kᵀ/√D)·v for n new rows against the cache with batched GEMMs:
 * O(n·L·d) per step instead of recomputing the O(L²·d) prefix. New rows sit at the end of the
 * cache, so row i may see keys [0, L − n + i].
 */
import { untrack } from '../autograd/scope';
import { tensor } from '../creation';
import { concat, matmul } from '../ops';
import { MomaError } from '../errors';
import { Tensor } from '../tensor';

export class LayerCache {
  private k: Tensor | null = null;
  private v: Tensor | null = null;

  /** Rows in the cache. */
  get length(): number {
    return this.k === null ? 0 : this.k.size(1);
  }

  get keys(): Tensor {
    if (this.k === null) throw new MomaError('ERR_ARG', 'LayerCache: empty cache');
    return this.k;
  }

  get values(): Tensor {
    if (this.v === null) throw new MomaError('ERR_ARG', 'LayerCache: empty cache');
    return this.v;
  }

  /** Appends keys and values of n rows, each [n, heads, headDim]. */
  append(k: Tensor, v: Tensor): void {
    const put = (old: Tensor | null, rows: Tensor): Tensor => {
      const f = rows.dtype === 'float32' ? rows : rows.astype('float32');
      const view = f.permute([1, 0, 2]);
      const headMajor = view.clone();
      view.dispose();
      if (f !== rows) f.dispose();
      if (old === null) return headMajor;
      const joined = concat([old, headMajor], 1);
      old.dispose();
      headMajor.dispose();
      return joined;
    };
    this.k = untrack(put(this.k, k));
    this.v = untrack(put(this.v, v));
  }

  dispose(): void {
    this.k?.dispose();
    this.v?.dispose();
    this.k = null;
    this.v = null;
  }

  /** `using` support: the same as dispose(). */
  [Symbol.dispose](): void {
    this.dispose();
  }
}

/**
 * The cache of one sequence: one LayerCache per decoder layer, and the tokens consumed. With
 * `bosId`, a BOS after the first position opens a new document: the rows before it are
 * never attended to again, so Transformer.decode empties the layer caches there (startDocument)
 * while positions go on counting.
 */
export class KVCache {
  readonly layers: LayerCache[];
  readonly bosId: number | undefined;
  /** Tokens consumed so far (the position of the next token). */
  length = 0;

  constructor(layers: number, options: { bosId?: number } = {}) {
    this.layers = Array.from({ length: layers }, () => new LayerCache());
    this.bosId = options.bosId;
  }

  /** Drops every cached row (a new document starts at position `length`). */
  startDocument(): void {
    for (const layer of this.layers) layer.dispose();
  }

  dispose(): void {
    for (const layer of this.layers) layer.dispose();
  }

  /** `using` support: the same as dispose(). */
  [Symbol.dispose](): void {
    this.dispose();
  }
}

/** Attention of n new rows q [n, heads, headDim] (already appended to `cache`) over the cache: [n, heads, headDim] float32. */
export function cachedAttention(q: Tensor, cache: LayerCache): Tensor {
  const n = q.size(0);
  const headDim = q.size(2);
  const L = cache.length;
  if (n > L) throw new MomaError('ERR_SHAPE', `cached_attention: ${n} query rows but only ${L} cached rows`);
  const q32 = q.dtype === 'float32' ? q : q.astype('float32');
  const qh = q32.permute([1, 0, 2]).clone();
  let scores = matmul(qh, cache.keys, { transB: true }).scale(1 / Math.sqrt(headDim));
  if (n > 1) {
    const first = L - n;
    const mask = new Float32Array(n * L);
    for (let i = 0; i < n; i++) mask.fill(-Infinity, i * L + first + i + 1, (i + 1) * L);
    const m = tensor(mask, { shape: [1, n, L], device: q.device });
    const masked = scores.add(m);
    scores.dispose();
    m.dispose();
    scores = masked;
  }
  const p = scores.softmax(-1);
  const o = matmul(p, cache.values);
  const out = o.permute([1, 0, 2]).clone();
  for (const t of [qh, scores, p, o]) t.dispose();
  if (q32 !== q) q32.dispose();
  return out;
}
