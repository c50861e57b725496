/**
 * Documents in the shared id space: `BOS, segments…, EOS`, where a text segment is its text
 * tokenizer ids shifted by the layout's text offset and an image segment is `BOI, codes…, EOI`
 * with exactly tokensPerImage codes shifted by the image offset (docs/DATA.md). `splitDocument`
 * inverts it (for decoding and for checking packed data).
 */
import { MomaError } from '../errors';
import type { TextTokenizer } from './text_tokenizer';
import type { VocabLayout } from './vocab';

/** A tokenized segment: local text ids, or image codes. */
export type TokenSegment = { text: ArrayLike<number> } | { codes: ArrayLike<number> };

/** The ids of one document. */
export function documentTokens(layout: VocabLayout, segments: TokenSegment[]): number[] {
  const out: number[] = [layout.bosId];
  segments.forEach((segment, s) => {
    if ('text' in segment) {
      for (let i = 0; i < segment.text.length; i++) {
        const id = segment.text[i];
        if (id === undefined || !Number.isInteger(id) || id < 0 || id >= layout.text.size) {
          throw new MomaError('ERR_RANGE', `documentTokens: segment ${s} text id ${String(id)} at ${i} is outside [0, ${layout.text.size})`);
        }
        out.push(layout.text.offset + id);
      }
      return;
    }
    const image = layout.image;
    if (image === null) throw new MomaError('ERR_ARG', `documentTokens: segment ${s} is an image but the vocabulary has no image tokenizer`);
    if (segment.codes.length !== image.tokenizer.tokensPerImage) {
      throw new MomaError('ERR_SHAPE', `documentTokens: segment ${s} has ${segment.codes.length} image codes, the vocabulary's images have ${image.tokenizer.tokensPerImage}`);
    }
    out.push(layout.boiId);
    for (let i = 0; i < segment.codes.length; i++) {
      const code = segment.codes[i];
      if (code === undefined || !Number.isInteger(code) || code < 0 || code >= image.size) {
        throw new MomaError('ERR_RANGE', `documentTokens: segment ${s} image code ${String(code)} at ${i} is outside [0, ${image.size})`);
      }
      out.push(image.offset + code);
    }
    out.push(layout.eoiId);
  });
  out.push(layout.eosId);
  return out;
}

/** Text segment ids (local) and image code runs of a token run; specials other than BOI/EOI are dropped. */
export function splitDocument(layout: VocabLayout, ids: ArrayLike<number>): ({ text: number[] } | { codes: number[] })[] {
  const out: ({ text: number[] } | { codes: number[] })[] = [];
  let current: { text: number[] } | { codes: number[] } | null = null;
  for (let i = 0; i < ids.length; i++) {
    const id = ids[i];
    if (id === undefined || !Number.isInteger(id) || id < 0 || id >= layout.size) throw new MomaError('ERR_RANGE', `splitDocument: id ${String(id)} at ${i} is outside the vocabulary [0, ${layout.size})`);
    if (id === layout.boiId) {
      current = { codes: [] };
      out.push(current);
    } else if (id === layout.eoiId) {
      current = null;
    } else if (layout.image !== null && id >= layout.image.offset) {
      if (current === null || !('codes' in current)) {
        current = { codes: [] };
        out.push(current);
      }
      current.codes.push(id - layout.image.offset);
    } else if (id >= layout.text.offset) {
      if (current === null || !('text' in current)) {
        current = { text: [] };
        out.push(current);
      }
      current.text.push(id - layout.text.offset);
    }
  }
  return out;
}

/** Encodes text into the shared id space (no BOS/EOS): a prompt or a caption. */
export function textIds(layout: VocabLayout, tokenizer: TextTokenizer, text: string): number[] {
  return tokenizer.encode(text).map((id) => layout.text.offset + id);
}
