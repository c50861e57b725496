/**
 * The grammar of a mixed-modal document (docs/DATA.md) as a decoding constraint: which ids may come
 * next, given every id so far (prompt included).
 *
 *   state 'text'   text ids, EOS and BOI (when the layout has an image tokenizer);
 *                  BOS only as the very first prompt id; PAD, EOI and image codes never.
 *   state 'image'  after BOI: exactly tokensPerImage image codes, then EOI alone, then 'text'.
 *   state 'done'   after EOS: nothing (generation stops).
 *
 * Prompt ids (pushPrompt) are checked against the grammar only; generated ids (push) also
 * against the options: allowImages false forbids BOI, allowText false leaves BOI as the only
 * choice in 'text' (forcing an image), stopAfterImage ends generation at the EOI that closes a
 * generated image. So a caption → image run is the prompt "BOS text… BOI" with stopAfterImage,
 * and an image → text run is "BOS BOI codes… EOI" with allowImages false.
 *
 * allowed() returns one cached mask per situation (length vocabSize, 1 = allowed), ready for
 * sampleToken; callers must not modify it.
 */
import { MomaError } from '../errors';
import { describeId, VocabLayout } from '../data/vocab';

export type ConstraintState = 'text' | 'image' | 'done';

export interface ModalityConstraintOptions {
  /** Generated BOI allowed (default true; a layout without images never allows it). */
  allowImages?: boolean;
  /** Generated text ids and EOS allowed outside images (default true); false forces images. */
  allowText?: boolean;
  /** Generation is done right after a generated EOI (default false). */
  stopAfterImage?: boolean;
  /** Length of the masks: the model's vocabulary size, at least layout.size (default layout.size). */
  vocabSize?: number;
}

/** Where decoding stands: the state, the codes still due in an image, ids consumed. */
interface Cursor {
  state: ConstraintState;
  codesLeft: number;
  position: number;
}

interface Mask {
  ids: Uint8Array;
  /** The single allowed id, or null. */
  forced: number | null;
}

function maskOf(size: number, ranges: [number, number][]): Mask {
  const ids = new Uint8Array(size);
  for (const [from, to] of ranges) ids.fill(1, from, to);
  let count = 0;
  let single = -1;
  for (let id = 0; id < size && count < 2; id++) {
    if (ids[id] === 1) {
      count++;
      single = id;
    }
  }
  return { ids, forced: count === 1 ? single : null };
}

export class ModalityConstraint {
  readonly layout: VocabLayout;
  readonly vocabSize: number;
  private readonly tokensPerImage: number;
  private readonly stopAfterImage: boolean;
  private readonly masks: { text: Mask; codes: Mask; eoi: Mask; done: Mask };
  private cursor: Cursor = { state: 'text', codesLeft: 0, position: 0 };

  constructor(layout: VocabLayout, options: ModalityConstraintOptions = {}) {
    const where = 'ModalityConstraint';
    if (layout === null || typeof layout !== 'object' || layout.format !== 'moma-vocab' || !Number.isInteger(layout.size) || layout.size < 1) {
      throw new MomaError('ERR_ARG', `${where}: layout must be a VocabLayout (lib/data/vocab.ts)`);
    }
    if (options === null || typeof options !== 'object') throw new MomaError('ERR_ARG', `${where}: options must be an object, got ${String(options)}`);
    for (const key of ['allowImages', 'allowText', 'stopAfterImage'] as const) {
      if (options[key] !== undefined && typeof options[key] !== 'boolean') {
        throw new MomaError('ERR_ARG', `${where}: option '${key}' must be a boolean, got ${String(options[key])}`);
      }
    }
    const vocabSize = options.vocabSize ?? layout.size;
    if (!Number.isSafeInteger(vocabSize) || vocabSize < layout.size) {
      throw new MomaError('ERR_ARG', `${where}: option 'vocabSize' must be an integer >= the layout's ${layout.size} ids, got ${String(options.vocabSize)}`);
    }
    const allowText = options.allowText ?? true;
    const allowImages = (options.allowImages ?? true) && layout.image !== null;
    if (!allowText && !allowImages) {
      throw new MomaError('ERR_ARG', `${where}: allowText is false and ${layout.image === null ? 'the layout has no image tokenizer' : 'allowImages is false'}, so nothing could be generated`);
    }
    this.layout = layout;
    this.vocabSize = vocabSize;
    this.tokensPerImage = layout.image === null ? 0 : layout.image.tokenizer.tokensPerImage;
    this.stopAfterImage = options.stopAfterImage ?? false;
    const single = (id: number): [number, number] => [id, id + 1];
    const text: [number, number][] = [];
    if (allowText) text.push([layout.text.offset, layout.text.offset + layout.text.size], single(layout.eosId));
    if (allowImages) text.push(single(layout.boiId));
    const image = layout.image;
    this.masks = {
      text: maskOf(vocabSize, text),
      codes: maskOf(vocabSize, image === null ? [] : [[image.offset, image.offset + image.size]]),
      eoi: maskOf(vocabSize, [single(layout.eoiId)]),
      done: maskOf(vocabSize, []),
    };
  }

  /** 'text', 'image' (inside BOI … EOI) or 'done' (after EOS, or after an image with stopAfterImage). */
  get state(): ConstraintState {
    return this.cursor.state;
  }

  /** Image codes still due before EOI (0 outside images). */
  get imageCodesLeft(): number {
    return this.cursor.codesLeft;
  }

  /** Ids consumed so far, prompt included. */
  get position(): number {
    return this.cursor.position;
  }

  /** The mask of ids that may be generated next (cached; do not modify). All 0 when done. */
  allowed(): Uint8Array {
    return this.maskAt(this.cursor).ids;
  }

  /** The only id that may be generated next, or null when there is a choice or none. */
  forced(): number | null {
    return this.maskAt(this.cursor).forced;
  }

  /** Consumes one generated id; it must be allowed (see allowed()), else ERR_RANGE. */
  push(id: number): void {
    this.cursor = this.advance(this.cursor, id, false, 'ModalityConstraint.push');
  }

  /**
   * Consumes prompt ids, checked against the grammar only (BOS also at position 0). All or
   * nothing: on an error the state is unchanged.
   */
  pushPrompt(ids: ArrayLike<number>): void {
    const where = 'ModalityConstraint.pushPrompt';
    if (!Array.isArray(ids) && !(ArrayBuffer.isView(ids) && !(ids instanceof DataView))) {
      throw new MomaError('ERR_ARG', `${where}: ids must be an array or a typed array, got ${String(ids)}`);
    }
    let cursor = this.cursor;
    for (const [i, id] of Array.from<number>(ids).entries()) cursor = this.advance(cursor, id, true, `${where}: prompt index ${i}`);
    this.cursor = cursor;
  }

  /** The generation mask after `at`. */
  private maskAt(at: Cursor): Mask {
    if (at.state === 'done') return this.masks.done;
    if (at.state === 'text') return this.masks.text;
    return at.codesLeft > 0 ? this.masks.codes : this.masks.eoi;
  }

  /** Whether `id` is allowed after `at` by the grammar alone (what a prompt may contain). */
  private grammarAllows(at: Cursor, id: number): boolean {
    const layout = this.layout;
    if (at.state === 'done') return false;
    if (at.state === 'image') return at.codesLeft > 0 ? layout.image !== null && id >= layout.image.offset && id < layout.image.offset + layout.image.size : id === layout.eoiId;
    if (id >= layout.text.offset && id < layout.text.offset + layout.text.size) return true;
    return id === layout.eosId || (id === layout.boiId && layout.image !== null) || (id === layout.bosId && at.position === 0);
  }

  /** The cursor after `id`, or a MomaError naming the id, its position and the state. */
  private advance(at: Cursor, id: number, prompt: boolean, where: string): Cursor {
    if (typeof id !== 'number' || !Number.isInteger(id)) throw new MomaError('ERR_ARG', `${where}: id must be an integer, got ${String(id)}`);
    if (id < 0 || id >= this.vocabSize) {
      throw new MomaError('ERR_RANGE', `${where}: id ${id} at position ${at.position} is outside the vocabulary [0, ${this.vocabSize})`);
    }
    const allowedHere = prompt ? this.grammarAllows(at, id) : this.maskAt(at).ids[id] === 1;
    if (!allowedHere) {
      const detail = at.state === 'image' ? ` (${at.codesLeft} image codes left)` : '';
      const why = !prompt && id !== this.layout.bosId && this.grammarAllows(at, id) ? ' by the generation options' : '';
      throw new MomaError('ERR_RANGE', `${where}: id ${id} (${describeId(this.layout, id)}) at position ${at.position} is not allowed${why} in state '${at.state}'${detail}`);
    }
    const position = at.position + 1;
    const layout = this.layout;
    if (at.state === 'image') {
      if (at.codesLeft > 0) return { state: 'image', codesLeft: at.codesLeft - 1, position };
      return { state: this.stopAfterImage && !prompt ? 'done' : 'text', codesLeft: 0, position };
    }
    if (id === layout.boiId) return { state: 'image', codesLeft: this.tokensPerImage, position };
    if (id === layout.eosId) return { state: 'done', codesLeft: 0, position };
    return { state: 'text', codesLeft: 0, position };
  }
}
