/**
 * A small byte-level BPE tokenizer.json built in memory (the GPT-2 byte-to-unicode table, the 256
 * byte symbols, an <unk> special and a few merges), so tests exercise a real Hugging Face file
 * without downloading one.
 */
function byteToUnicode(): string[] {
  const printable: number[] = [];
  for (let b = 33; b <= 126; b++) printable.push(b);
  for (let b = 161; b <= 172; b++) printable.push(b);
  for (let b = 174; b <= 255; b++) printable.push(b);
  const table = new Array<string>(256);
  let extra = 0;
  for (let b = 0; b < 256; b++) table[b] = String.fromCodePoint(printable.includes(b) ? b : 256 + extra++);
  return table;
}

export const HF_MERGES: [string, string][] = [['h', 'e'], ['l', 'l'], ['he', 'll'], ['hell', 'o'], ['Ġ', 'w'], ['Ġw', 'o']];

/** The tokenizer.json object: id 0 <unk>, ids 1..256 the byte symbols, then one id per merge. */
export function byteLevelBpeJson(): Record<string, unknown> {
  const vocab: Record<string, number> = { '<unk>': 0 };
  let id = 1;
  for (const symbol of byteToUnicode()) vocab[symbol] = id++;
  for (const [a, b] of HF_MERGES) vocab[a + b] = id++;
  const byteLevel = { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true };
  return {
    version: '1.0', truncation: null, padding: null,
    added_tokens: [{ id: 0, content: '<unk>', single_word: false, lstrip: false, rstrip: false, normalized: false, special: true }],
    normalizer: null, pre_tokenizer: byteLevel, post_processor: null, decoder: byteLevel,
    model: { type: 'BPE', dropout: null, unk_token: '<unk>', continuing_subword_prefix: null, end_of_word_suffix: null, fuse_unk: false, byte_fallback: false, vocab, merges: HF_MERGES.map((m) => m.join(' ')) },
  };
}
