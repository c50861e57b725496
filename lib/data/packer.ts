/**
 * Sequence packing: documents (BOS … EOS token runs) drawn in a fixed order are concatenated into
 * sequences of `seqLen` tokens, `batchSize` sequences per batch. A document that does not fit in
 * what is left of a sequence continues at the start of the next one (makeBatch starts a
 * document at every BOS, at every sequence start and at the first non-padding token after
 * padding, so attention never crosses documents).
 *
 * Text:image ratio control (`imageFraction`): reordering alone cannot move the long-run mix
 * (everything drawn is eventually emitted), so the draw order is split into two streams by
 * kind: image-rich documents (image-token fraction above the target) and text-rich ones (the
 * rest). Each kind has a cursor walking the draw order and taking only documents of its kind,
 * in order; for every pick the packer takes the next document of whichever kind brings the
 * batch's image-token fraction closest to the target (ties: the earlier draw). The kinds thus
 * advance through the data at different rates (the scarcer kind is repeated more often), and
 * no document starves: every document a cursor reaches is emitted before any later one of its
 * kind. A kind with no documents is skipped. Without a target, documents go strictly in order.
 *
 * Finite stores are classified once (store.profile when it exists, else by reading each
 * document), so a cursor finds its next document without reading any. Over an endless store
 * (a generator) a cursor never runs more than `lookahead` draws ahead of the other one: a kind
 * the data lacks then costs O(1) reads per pick, but in the long run the kinds advance at the
 * same rate, so there ratio control only reorders within the look-ahead and the mix follows the
 * generator's (which is where an endless store's mix is set).
 *
 * The state (cursors, carried document and offset, batches) is plain JSON: restoring it
 * reproduces the following batches exactly.
 */
import { MomaError } from '../errors';
import type { DocumentStore, TokenBatchSource } from './dataset';
import { at, describeValue } from '../checked';

export interface PackerOptions {
  batchSize: number;
  seqLen: number;
  /** Whether a token id is an image token (ratio control and batch statistics). */
  isImage(id: number): boolean;
  /** Target fraction of image tokens per batch, in [0, 1]; null or undefined: documents in order. */
  imageFraction?: number | null;
  /** Ratio control over an endless store: how far one kind's cursor may run ahead of the other's (default 256 draws). */
  lookahead?: number;
}

export interface PackerState {
  /** In order: the next draw. Ratio control: the next draw the text-rich cursor considers. */
  next: number;
  /** Ratio control: the next draw the image-rich cursor considers (0 in order). */
  nextImage: number;
  /** The document (by draw index) continuing at the next sequence, and how many of its tokens were used. */
  carry: { draw: number; offset: number } | null;
  /** Batches produced. */
  batches: number;
}

interface Doc {
  tokens: ArrayLike<number>;
  images: number;
}

const TEXT = 0;
const IMAGE = 1;
type Kind = typeof TEXT | typeof IMAGE;

export class SequencePacker implements TokenBatchSource {
  private state_: PackerState = { next: 0, nextImage: 0, carry: null, batches: 0 };
  private readonly cache = new Map<number, Doc>();
  private readonly lookahead: number;
  /** Ratio control, finite store: the kind of every document id, and how many of each kind. */
  private kinds: Int8Array | null = null;
  private readonly kindCounts: [number, number] = [0, 0];
  /** Ratio control: the draw each cursor found for its kind (derived from the state). */
  private readonly found: [number | null, number | null] = [null, null];

  constructor(private readonly store: DocumentStore, readonly options: PackerOptions) {
    const { batchSize, seqLen, imageFraction } = options;
    if (!Number.isInteger(batchSize) || batchSize < 1) throw new MomaError('ERR_ARG', `SequencePacker: batchSize must be an integer >= 1, got ${String(batchSize)}`);
    if (!Number.isInteger(seqLen) || seqLen < 2) throw new MomaError('ERR_ARG', `SequencePacker: seqLen must be an integer >= 2, got ${String(seqLen)}`);
    if (typeof options.isImage !== 'function') throw new MomaError('ERR_ARG', 'SequencePacker: isImage must be a function');
    if (imageFraction !== undefined && imageFraction !== null && !(imageFraction >= 0 && imageFraction <= 1)) {
      throw new MomaError('ERR_RANGE', `SequencePacker: imageFraction must lie in [0, 1], got ${String(imageFraction)}`);
    }
    this.lookahead = options.lookahead ?? 256;
    if (!Number.isInteger(this.lookahead) || this.lookahead < 1) throw new MomaError('ERR_ARG', `SequencePacker: lookahead must be an integer >= 1, got ${String(options.lookahead)}`);
    if (store === null || typeof store !== 'object' || typeof store.idAt !== 'function' || typeof store.tokens !== 'function') {
      throw new MomaError('ERR_ARG', 'SequencePacker: store must be a DocumentStore { count, idAt, tokens }');
    }
    if (!(store.count > 0) || !(Number.isInteger(store.count) || store.count === Infinity)) {
      throw new MomaError('ERR_ARG', `SequencePacker: the document store must hold at least one document, count is ${String(store.count)}`);
    }
  }

  private doc(draw: number): Doc {
    let doc = this.cache.get(draw);
    if (doc === undefined) {
      const id = this.store.idAt(draw);
      const tokens = this.store.tokens(id);
      if (tokens.length === 0) throw new MomaError('ERR_FILE', `SequencePacker: document ${id} (draw ${draw}) is empty`);
      let images = 0;
      for (let i = 0; i < tokens.length; i++) if (this.options.isImage(at(tokens, i, 'SequencePacker'))) images++;
      doc = { tokens, images };
      this.cache.set(draw, doc);
    }
    return doc;
  }

  /** The kind of document `id` for the target (image-rich: image fraction above it). */
  private kindOfId(id: number, target: number): Kind {
    if (this.store.profile) {
      const p = this.store.profile(id);
      return p.imageTokens > target * p.tokens ? IMAGE : TEXT;
    }
    const tokens = this.store.tokens(id);
    let images = 0;
    for (let i = 0; i < tokens.length; i++) if (this.options.isImage(at(tokens, i, 'SequencePacker'))) images++;
    return images > target * tokens.length ? IMAGE : TEXT;
  }

  /** The next draw of `kind` at or after its cursor, or null when none is available. */
  private findNext(kind: Kind, target: number): number | null {
    const cached = this.found[kind];
    if (cached !== null) return cached;
    const s = this.state_;
    const cursor = kind === TEXT ? s.next : s.nextImage;
    let hit: number | null = null;
    if (this.store.count !== Infinity) {
      if (this.kinds === null) {
        this.kinds = new Int8Array(this.store.count);
        for (let id = 0; id < this.store.count; id++) this.kindCounts[(this.kinds[id] = this.kindOfId(id, target))]++;
      }
      // every epoch holds every document, so a kind with documents is found within 2·count draws
      if (this.kindCounts[kind] > 0) for (hit = cursor; this.kinds[this.store.idAt(hit)] !== kind; hit++);
    } else {
      // endless: a cursor stays within `lookahead` draws of the other one
      const end = Math.max(cursor, (kind === TEXT ? s.nextImage : s.next) + this.lookahead);
      for (let k = cursor; k < end && hit === null; k++) if (this.kindOfId(this.store.idAt(k), target) === kind) hit = k;
      // nothing of this kind in the scanned draws: the cursor skips them (they are all of the other kind)
      if (hit === null) this.setCursor(kind, end);
    }
    this.found[kind] = hit;
    return hit;
  }

  private setCursor(kind: Kind, value: number): void {
    if (kind === TEXT) this.state_.next = value;
    else this.state_.nextImage = value;
  }

  /** Chooses the next document for a sequence with `space` tokens left, given the batch's counts so far. */
  private pick(space: number, placed: number, placedImages: number): number {
    const target = this.options.imageFraction;
    if (target === undefined || target === null) return this.state_.next++;
    let text = this.findNext(TEXT, target);
    let image = this.findNext(IMAGE, target);
    // endless store, both missed (only from a restored state with the cursors more than
    // `lookahead` apart): the misses moved the cursors over each other's kind, so a second
    // look finds one
    while (text === null && image === null) {
      text = this.findNext(TEXT, target);
      image = this.findNext(IMAGE, target);
    }
    const error = (draw: number): number => {
      const d = this.doc(draw);
      const used = Math.min(space, d.tokens.length);
      return Math.abs((placedImages + (d.images * used) / d.tokens.length) / (placed + used) - target);
    };
    let kind: Kind;
    if (text === null) kind = IMAGE;
    else if (image === null) kind = TEXT;
    else {
      const textError = error(text);
      const imageError = error(image);
      kind = textError < imageError || (textError === imageError && text < image) ? TEXT : IMAGE;
    }
    const draw = (kind === TEXT ? text : image) as number;
    this.setCursor(kind, draw + 1);
    this.found[kind] = null;
    return draw;
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
          const id = at(d.tokens, i, 'SequencePacker');
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
    return { next: s.next, nextImage: s.nextImage, carry: s.carry === null ? null : { ...s.carry }, batches: s.batches };
  }

  restore(state: unknown): void {
    const s = state as Partial<PackerState> | null;
    const isCount = (x: unknown): x is number => Number.isSafeInteger(x) && (x as number) >= 0;
    const keys = s !== null && typeof s === 'object' ? Object.keys(s).sort().join(',') : '';
    const ok = keys === 'batches,carry,next,nextImage' && isCount(s!.next) && isCount(s!.nextImage) && isCount(s!.batches)
      && (s!.carry === null || (typeof s!.carry === 'object' && Object.keys(s!.carry).sort().join(',') === 'draw,offset'
        && isCount(s!.carry.draw) && isCount(s!.carry.offset) && s!.carry.draw < Math.max(s!.next!, s!.nextImage!)));
    if (!ok) throw new MomaError('ERR_ARG', `SequencePacker.restore: expected { next, nextImage, carry, batches } as saved by state(), got ${describeValue(state)}`);
    const restored: PackerState = { next: s!.next!, nextImage: s!.nextImage!, carry: s!.carry ? { ...s!.carry } : null, batches: s!.batches! };
    this.cache.clear();
    this.found[TEXT] = null;
    this.found[IMAGE] = null;
    if (restored.carry !== null) {
      const length = this.doc(restored.carry.draw).tokens.length;
      if (restored.carry.offset < 1 || restored.carry.offset >= length) {
        this.cache.clear();
        throw new MomaError('ERR_ARG', `SequencePacker.restore: carry offset ${restored.carry.offset} must lie inside its document [1, ${length})`);
      }
    }
    this.state_ = restored;
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
