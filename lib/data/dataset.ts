/**
 * A mixed-modal dataset as the trainer sees it: a vocabulary layout, the tokenizer files that
 * layout names, and document stores for training and held-out evaluation. The built-in captioned
 * shapes (lib/data/builtin.ts) and packed shard sets (lib/data/shard_set.ts) both provide one;
 * SequencePacker (lib/data/packer.ts) turns a store into batches.
 */
import type { DocumentStore } from './packer';
import type { VocabLayout } from './vocab';

export type Split = 'train' | 'eval';

export interface MixedModalDataset {
  /** For logs and run configs: 'builtin:shapes' or the shard set's folder. */
  readonly name: string;
  readonly layout: VocabLayout;
  /** The files the layout names (codebook, tokenizer.json) by file name, to store next to vocab.json. */
  readonly files: Record<string, Buffer>;
  /** The documents of a split, in the order `seed` gives; null when the dataset has no such split. */
  store(split: Split, seed: number): DocumentStore | null;
}
