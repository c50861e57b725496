/**
 * The data layer's contracts: what the trainer, evaluation and the run take from data.
 *   DocumentStore       documents in a fixed draw order (a shard set's split, the built-in shapes)
 *   MixedModalDataset   a vocabulary layout, the tokenizer files that layout names, and document
 *                       stores for training and held-out evaluation; the built-in captioned shapes
 *                       (lib/data/builtin.ts) and packed shard sets (lib/data/shard_set.ts) both
 *                       provide one
 *   TokenBatchSource    batches of token sequences with a resumable position, what the Trainer
 *                       pulls from; SequencePacker (lib/data/packer.ts) turns a store into one, and
 *                       SyntheticSource (lib/data/synthetic.ts) is a small one for tests
 * The vocabulary contracts (VocabSpec, VocabInfo) are in lib/data/vocab.ts.
 */
import type { VocabLayout } from './vocab';

export type Split = 'train' | 'eval';

/** Where documents come from: the k-th draw (k = 0, 1, …) and its tokens. */
export interface DocumentStore {
  /** Number of distinct documents (Infinity for generated data). */
  readonly count: number;
  /** The document id of draw k (shuffled stores permute here). */
  idAt(k: number): number;
  /** The tokens of a document. */
  tokens(id: number): ArrayLike<number>;
  /** Optional: token and image-token counts without reading the document (cheap classification). */
  profile?(id: number): { tokens: number; imageTokens: number };
}

export interface MixedModalDataset {
  /** For logs and run configs: 'builtin:shapes' or the shard set's folder. */
  readonly name: string;
  readonly layout: VocabLayout;
  /** The files the layout names (codebook, tokenizer.json) by file name, to store next to vocab.json. */
  readonly files: Record<string, Buffer>;
  /** The documents of a split, in the order `seed` gives; null when the dataset has no such split. */
  store(split: Split, seed: number): DocumentStore | null;
}

/** Where batches come from: B sequences of S token ids per call, with a resumable position. */
export interface TokenBatchSource {
  next(): Promise<number[][]> | number[][];
  state(): unknown;
  restore(state: unknown): void;
}
