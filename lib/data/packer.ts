/**
 * Sequence packing: documents (BOS … EOS token runs) drawn in a fixed order are concatenated into
 * sequences of `seqLen` tokens, `batchSize` sequences per batch. A document that does not fit in
 * what is left of a sequence continues at the start of the next one (makeBatch starts a
 * document at every BOS and at every sequence start, so attention never crosses documents).
 *
 * Text:image ratio control (`imageFraction`): the packer looks `window` documents ahead in the
 * draw order and takes the one that brings the batch's image-token fraction closest to the
 * target (ties: the earliest drawn); a document that has waited `4 · window` draws is taken
 * first, so none starves. Without a target it takes documents strictly in order.
 *
 * The state (draw counter, window, carried document and offset) is plain JSON: restoring it
 * reproduces the following batches exactly.
 */
import { MomaError } from '../errors';
import type { TokenBatchSource } from '../train/trainer';

/** Where documents come from: the k-th draw (k = 0, 1, …) and its tokens. */
export interface DocumentStore {
  /** Number of distinct documents (Infinity for generated data). */
  readonly count: number;
  /** The document id of draw k (shuffled stores permute here). */
  idAt(k: number): number;
  /** The tokens of a document; `k` is the draw that asked for it (for error messages). */
  tokens(id: number): ArrayLike<number>;
}

export interface PackerOptions {
  batchSize: number;
  seqLen: number;
  /** Whether a token id is an image token (ratio control and batch statistics). */
  isImage(id: number): boolean;
  /** Target fraction of image tokens per batch, in [0, 1]; null or undefined: documents in order. */
  imageFraction?: number | null;
  /** Look-ahead in documents for ratio control (default 32). */
  window?: number;
}

export interface PackerState {
  /** Draws taken from the store so far (into the window or straight into a sequence). */
  drawn: number;
  /** Draw indexes waiting in the look-ahead window, in draw order. */
  window: number[];
  /** The document (by draw index) continuing at the next sequence, and how many of its tokens were used. */
  carry: { draw: number; offset: number } | null;
  /** Batches produced. */
  batches: number;
}

interface Doc {
  tokens: ArrayLike<number>;
  images: number;
}

export class SequencePacker implements TokenBatchSource {
  private state_: PackerState = { drawn: 0, window: [], carry: null, batches: 0 };
  private readonly cache = new Map<number, Doc>();
  private readonly windowSize: number;

  constructor(private readonly store: DocumentStore, readonly options: PackerOptions) {
    const { batchSize, seqLen, imageFraction } = options;
    if (!Number.isInteger(batchSize) || batchSize < 1) throw new MomaError('ERR_ARG', `SequencePacker: batchSize must be an integer >= 1, got ${String(batchSize)}`);
    if (!Number.isInteger(seqLen) || seqLen < 2) throw new MomaError('ERR_ARG', `SequencePacker: seqLen must be an integer >= 2, got ${String(seqLen)}`);
    if (imageFraction !== undefined && imageFraction !== null && !(imageFraction >= 0 && imageFraction <= 1)) {
      throw new MomaError('ERR_RANGE', `SequencePacker: imageFraction must lie in [0, 1], got ${String(imageFraction)}`);
    }
    this.windowSize = options.window ?? 32;
    if (!Number.isInteger(this.windowSize) || this.windowSize < 1) throw new MomaError('ERR_ARG', `SequencePacker: window must be an integer >= 1, got ${String(options.window)}`);
    if (!(store.count > 0)) throw new MomaError('ERR_ARG', 'SequencePacker: the document store is empty');
  }

  private doc(draw: number): Doc {
    let doc = this.cache.get(draw);
    if (doc === undefined) {
      const tokens = this.store.tokens(this.store.idAt(draw));
      if (tokens.length === 0) throw new MomaError('ERR_FILE', `SequencePacker: document of draw ${draw} (id ${this.store.idAt(draw)}) is empty`);
      let images = 0;
      for (let i = 0; i < tokens.length; i++) if (this.options.isImage(tokens[i] as number)) images++;
      doc = { tokens, images };
      this.cache.set(draw, doc);
    }
    return doc;
  }

  /** Chooses the next document for a sequence with `space` tokens left, given the batch's counts so far. */
  private pick(space: number, placed: number, placedImages: number): number {
    const s = this.state_;
    const target = this.options.imageFraction;
    if (target === undefined || target === null) {
      if (s.window.length > 0) return s.window.shift() as number;
      return s.drawn++;
    }
    while (s.window.length < this.windowSize) s.window.push(s.drawn++);
    let best = 0;
    if (s.drawn - (s.window[0] as number) <= 4 * this.windowSize) {
      let bestError = Infinity;
      s.window.forEach((draw, i) => {
        const d = this.doc(draw);
        const used = Math.min(space, d.tokens.length);
        const images = (d.images * used) / d.tokens.length;
        const error = Math.abs((placedImages + images) / (placed + used) - target);
        if (error < bestError) {
          bestError = error;
          best = i;
        }
      });
    }
    return s.window.splice(best, 1)[0] as number;
  }

  next(): number[][] {
    const { batchSize, seqLen } = this.options;
    const s = this.state_;
    const out: number[][] = [];
    let placed = 0;
    let placedImages = 0;
    for (let b = 0; b < batchSize; b++) {
      const seq: number[] = [];
      while (seq.length < seqLen) {
        let draw: number;
        let offset = 0;
        if (s.carry !== null) {
          ({ draw, offset } = s.carry);
          s.carry = null;
        } else {
          draw = this.pick(seqLen - seq.length, placed + seq.length, placedImages);
        }
        const d = this.doc(draw);
        const take = Math.min(seqLen - seq.length, d.tokens.length - offset);
        for (let i = offset; i < offset + take; i++) {
          const id = d.tokens[i] as number;
          seq.push(id);
          if (this.options.isImage(id)) placedImages++;
        }
        if (offset + take < d.tokens.length) s.carry = { draw, offset: offset + take };
        else this.cache.delete(draw);
      }
      placed += seq.length;
      out.push(seq);
    }
    s.batches++;
    return out;
  }

  state(): PackerState {
    const s = this.state_;
    return { drawn: s.drawn, window: [...s.window], carry: s.carry === null ? null : { ...s.carry }, batches: s.batches };
  }

  restore(state: unknown): void {
    const s = state as Partial<PackerState> | null;
    const isCount = (x: unknown): x is number => Number.isSafeInteger(x) && (x as number) >= 0;
    const ok = s !== null && typeof s === 'object' && isCount(s.drawn) && isCount(s.batches) && Array.isArray(s.window)
      && s.window.every((k) => isCount(k) && k < (s.drawn as number))
      && (s.carry === null || (typeof s.carry === 'object' && isCount(s.carry?.draw) && isCount(s.carry?.offset) && s.carry!.draw < (s.drawn as number)));
    if (!ok) throw new MomaError('ERR_ARG', `SequencePacker.restore: expected { drawn, window, carry, batches } as saved by state(), got ${JSON.stringify(state)}`);
    this.cache.clear();
    this.state_ = { drawn: s!.drawn!, window: [...s!.window!], carry: s!.carry ? { ...s!.carry } : null, batches: s!.batches! };
    if (this.state_.carry !== null && this.state_.carry.offset >= this.doc(this.state_.carry.draw).tokens.length) {
      throw new MomaError('ERR_ARG', `SequencePacker.restore: carry offset ${this.state_.carry.offset} is past the end of its document`);
    }
  }

  /** Image tokens / all tokens of a batch (a statistic for logs). */
  imageFractionOf(batch: number[][]): number {
    let images = 0;
    let all = 0;
    for (const seq of batch) for (const id of seq) {
      all++;
      if (this.options.isImage(id)) images++;
    }
    return all > 0 ? images / all : 0;
  }
}
