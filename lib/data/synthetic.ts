/**
 * A small synthetic mixed-modal token source for tests, examples and smoke runs (real data: the
 * built-in shapes and shard sets, through SequencePacker). Each sequence holds documents of BOS,
 * a few text tokens naming a "colour" and a "shape", then an image of `imageLength` codes whose
 * values are a function of that colour and shape (plus seeded noise), so both modalities have
 * structure a model can learn. Deterministic by seed; the position is the number of batches drawn.
 *
 * Vocabulary (`syntheticVocab`): 0 PAD, 1 BOS, 2..63 text, 64..127 image codes.
 */
import { MomaError } from '../errors';
import type { TokenBatchSource } from './dataset';
import type { VocabSpec } from './vocab';

export const syntheticVocab: VocabSpec = { padId: 0, bosId: 1, ranges: [{ modality: 1, from: 64, to: 128 }] };
export const SYNTHETIC_VOCAB_SIZE = 128;

function mix(a: number): number {
  let x = a | 0;
  x = Math.imul(x ^ (x >>> 16), 0x45d9f3b);
  x = Math.imul(x ^ (x >>> 16), 0x45d9f3b);
  return (x ^ (x >>> 16)) >>> 0;
}

export class SyntheticSource implements TokenBatchSource {
  private position = 0;

  constructor(readonly options: { batchSize: number; seqLen: number; seed?: number; imageLength?: number }) {
    if (!Number.isInteger(options.batchSize) || options.batchSize < 1 || !Number.isInteger(options.seqLen) || options.seqLen < 8) {
      throw new MomaError('ERR_ARG', 'SyntheticSource: batchSize >= 1 and seqLen >= 8 (integers) are required');
    }
  }

  next(): number[][] {
    const { batchSize, seqLen } = this.options;
    const seed = this.options.seed ?? 0;
    const imageLength = this.options.imageLength ?? 8;
    const out: number[][] = [];
    for (let b = 0; b < batchSize; b++) {
      const seq: number[] = [];
      let doc = 0;
      while (seq.length < seqLen) {
        const r = mix(seed * 1000003 + this.position * 7919 + b * 104729 + doc++);
        const colour = r % 6;
        const shape = (r >>> 8) % 5;
        seq.push(1, 2 + colour, 8 + shape, 13 + ((colour + shape) % 4));
        for (let i = 0; i < imageLength; i++) {
          const noise = mix(r + i) % 16 === 0 ? 1 : 0;
          seq.push(64 + ((colour * 7 + shape * 3 + i * (shape + 1) + noise) % 64));
        }
      }
      out.push(seq.slice(0, seqLen));
    }
    this.position++;
    return out;
  }

  state(): { position: number } {
    return { position: this.position };
  }

  restore(state: unknown): void {
    const p = (state as { position?: unknown } | null)?.position;
    if (!Number.isInteger(p) || (p as number) < 0) throw new MomaError('ERR_ARG', 'SyntheticSource.restore: expected { position: integer >= 0 }');
    this.position = p as number;
  }
}
