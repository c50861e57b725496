/**
 * Text tokenizers. Ids here are local (0 … size-1); the vocabulary layout offsets them.
 * - ByteTokenizer: UTF-8 bytes, 256 ids, no files (the default).
 * - HFTokenizer: any Hugging Face `tokenizer.json`, through @huggingface/tokenizers (pure JS),
 *   encoded without the tokenizer's own special tokens (moma adds BOS/EOS/BOI/EOI itself).
 */
import { createHash } from 'crypto';
import * as fs from 'fs';
import * as path from 'path';
import { Tokenizer } from '@huggingface/tokenizers';
import { MomaError } from '../errors';
import { jsonSyntaxProblem } from '../io/files';
import type { TextTokenizerInfo } from './vocab';

export interface TextTokenizer {
  readonly info: TextTokenizerInfo;
  /** Number of local ids. */
  readonly size: number;
  encode(text: string): number[];
  decode(ids: ArrayLike<number>): string;
}

export class ByteTokenizer implements TextTokenizer {
  readonly info: TextTokenizerInfo = { kind: 'bytes' };
  readonly size = 256;

  encode(text: string): number[] {
    if (typeof text !== 'string') throw new MomaError('ERR_ARG', 'ByteTokenizer.encode: expected a string');
    return [...Buffer.from(text, 'utf8')];
  }

  decode(ids: ArrayLike<number>): string {
    const bytes = Buffer.alloc(ids.length);
    for (const [i, id] of Array.from(ids).entries()) {
      if (!Number.isInteger(id) || id < 0 || id > 255) throw new MomaError('ERR_RANGE', `ByteTokenizer.decode: id ${String(id)} at position ${i} is not a byte`);
      bytes[i] = id;
    }
    return bytes.toString('utf8');
  }
}

export class HFTokenizer implements TextTokenizer {
  readonly info: TextTokenizerInfo;
  readonly size: number;
  private readonly tokenizer: Tokenizer;

  private constructor(json: Record<string, unknown>, readonly file: string, sha256: string) {
    try {
      this.tokenizer = new Tokenizer(json, {});
    } catch (err) {
      throw new MomaError('ERR_FILE', `tokenizer ${file}: not a tokenizer.json this library can load (${(err as Error).message})`);
    }
    const ids = [...this.tokenizer.get_vocab(true).values()];
    if (ids.length === 0) throw new MomaError('ERR_FILE', `tokenizer ${file}: empty vocabulary`);
    this.size = Math.max(...ids) + 1;
    this.info = { kind: 'hf', file: path.basename(file), sha256 };
  }

  /** Loads a tokenizer.json file. */
  static fromFile(file: string): HFTokenizer {
    let bytes: Buffer;
    try {
      bytes = fs.readFileSync(file);
    } catch (err) {
      throw new MomaError('ERR_FILE', `tokenizer ${file}: cannot be read (${(err as Error).message})`);
    }
    let text: string;
    let json: unknown;
    try {
      text = new TextDecoder('utf-8', { fatal: true }).decode(bytes);
    } catch {
      throw new MomaError('ERR_FILE', `tokenizer ${file}: not valid JSON (not UTF-8 text)`);
    }
    try {
      json = JSON.parse(text);
    } catch (err) {
      throw new MomaError('ERR_FILE', `tokenizer ${file}: not valid JSON (${jsonSyntaxProblem(err, text)})`);
    }
    if (json === null || typeof json !== 'object' || typeof (json as { model?: unknown }).model !== 'object') {
      throw new MomaError('ERR_FILE', `tokenizer ${file}: key 'model' is missing (not a Hugging Face tokenizer.json)`);
    }
    return new HFTokenizer(json as Record<string, unknown>, file, createHash('sha256').update(bytes).digest('hex'));
  }

  encode(text: string): number[] {
    if (typeof text !== 'string') throw new MomaError('ERR_ARG', 'HFTokenizer.encode: expected a string');
    const ids = this.tokenizer.encode(text, { add_special_tokens: false }).ids;
    const bad = ids.findIndex((id) => !Number.isInteger(id));
    if (bad >= 0) throw new MomaError('ERR_RANGE', `HFTokenizer.encode: ${this.file} has no id for token ${bad} of ${JSON.stringify(text.slice(0, 60))} (a vocabulary without an unknown token?)`);
    return ids;
  }

  decode(ids: ArrayLike<number>): string {
    const list = Array.from(ids);
    list.forEach((id, i) => {
      if (!Number.isInteger(id) || id < 0 || id >= this.size) throw new MomaError('ERR_RANGE', `HFTokenizer.decode: id ${String(id)} at position ${i} is outside [0, ${this.size})`);
    });
    return list.length === 0 ? '' : this.tokenizer.decode(list, { skip_special_tokens: false, clean_up_tokenization_spaces: false });
  }
}

/**
 * The text tokenizer a layout names; an "hf" one is read from `dir` (the folder of vocab.json)
 * and must match the recorded SHA-256.
 */
export function loadTextTokenizer(info: TextTokenizerInfo, dir: string): TextTokenizer {
  if (info.kind === 'bytes') return new ByteTokenizer();
  const file = path.join(dir, info.file);
  const tokenizer = HFTokenizer.fromFile(file);
  if (tokenizer.info.kind === 'hf' && tokenizer.info.sha256 !== info.sha256) {
    throw new MomaError('ERR_FILE', `tokenizer ${file}: SHA-256 ${tokenizer.info.sha256} differs from the vocabulary's ${info.sha256}`);
  }
  return tokenizer;
}
