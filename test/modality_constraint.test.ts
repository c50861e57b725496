/** The decoding grammar of mixed-modal documents (lib/generate/modality_constraint.ts). */
import { SeededRandom } from '../lib/data/seeded_random';
import { buildVocabLayout, ImageTokenizerInfo, VocabLayout } from '../lib/data/vocab';
import { ModalityConstraint, ModalityConstraintOptions } from '../lib/generate/modality_constraint';
import { sampleToken, validateSampling } from '../lib/generate/sampling';
import { throwsCode, messageOf } from './support/errors';

// Awkward sizes: 13 text ids, 9 codes, 4 codes per image.
const image: ImageTokenizerInfo = { kind: 'vq-patch', file: 'image_tokenizer.safetensors', sha256: 'ab'.repeat(32), imageSize: 8, patchSize: 4, codebookSize: 9, tokensPerImage: 4 };
const layout = buildVocabLayout({ tokenizer: { kind: 'bytes' }, size: 13 }, image);
const textOnly = buildVocabLayout({ tokenizer: { kind: 'bytes' }, size: 13 });
const { padId: PAD, bosId: BOS, eosId: EOS, boiId: BOI, eoiId: EOI } = layout;
const TEXT = Array.from({ length: 13 }, (_, i) => layout.text.offset + i);
const CODES = Array.from({ length: 9 }, (_, i) => layout.image!.offset + i);

function idsOf(mask: Uint8Array): number[] {
  return Array.from(mask.keys()).filter((id) => mask[id] === 1);
}

/** Checks a whole sequence against the grammar, independently of the class: returns the image spans' lengths. */
function imageSpans(sequence: number[], l: VocabLayout): number[] {
  const spans: number[] = [];
  let inside = -1;
  sequence.forEach((id, i) => {
    const isCode = l.image !== null && id >= l.image.offset;
    if (inside >= 0) {
      if (isCode) inside++;
      else {
        expect(id).toBe(EOI);
        spans.push(inside);
        inside = -1;
      }
      return;
    }
    expect(isCode || id === PAD || id === EOI || (id === BOS && i > 0)).toBe(false);
    if (id === BOI) inside = 0;
    if (id === EOS) expect(i).toBe(sequence.length - 1);
  });
  return spans;
}

describe('ModalityConstraint states and masks', () => {
  test('text state allows text ids, BOI and EOS only', () => {
    const c = new ModalityConstraint(layout);
    expect(c.state).toBe('text');
    expect(c.allowed().length).toBe(layout.size);
    expect(idsOf(c.allowed())).toEqual([EOS, BOI, ...TEXT].sort((a, b) => a - b));
    expect(c.forced()).toBeNull();
    expect(c.imageCodesLeft).toBe(0);
  });

  test('BOI opens exactly tokensPerImage codes, then EOI alone, then text again', () => {
    const c = new ModalityConstraint(layout);
    c.pushPrompt([BOS, TEXT[3]!]);
    c.push(BOI);
    for (let k = 4; k > 0; k--) {
      expect(c.state).toBe('image');
      expect(c.imageCodesLeft).toBe(k);
      expect(idsOf(c.allowed())).toEqual(CODES);
      expect(c.forced()).toBeNull();
      c.push(CODES[k]!);
    }
    expect(c.imageCodesLeft).toBe(0);
    expect(idsOf(c.allowed())).toEqual([EOI]);
    expect(c.forced()).toBe(EOI);
    c.push(EOI);
    expect(c.state).toBe('text');
    expect(c.position).toBe(8);
    c.push(EOS);
    expect(c.state).toBe('done');
    expect(idsOf(c.allowed())).toEqual([]);
    expect(c.forced()).toBeNull();
    throwsCode(() => c.push(TEXT[0]!), 'ERR_RANGE');
  });

  test('masks are cached per situation', () => {
    const c = new ModalityConstraint(layout);
    const text = c.allowed();
    c.push(BOI);
    const codes = c.allowed();
    c.push(CODES[0]!);
    expect(c.allowed()).toBe(codes);
    c.pushPrompt([CODES[1]!, CODES[2]!, CODES[3]!, EOI]);
    expect(c.allowed()).toBe(text);
  });

  test('bad pushes throw ERR_RANGE naming the id, position and state, and change nothing', () => {
    const c = new ModalityConstraint(layout);
    expect(messageOf(() => c.push(BOS))).toBe("ModalityConstraint.push: id 1 (BOS) at position 0 is not allowed in state 'text'");
    for (const id of [PAD, BOS, EOI, CODES[0]!]) throwsCode(() => c.push(id), 'ERR_RANGE');
    c.pushPrompt([BOS, TEXT[0]!, BOI, CODES[8]!]);
    expect(messageOf(() => c.push(TEXT[2]!))).toBe("ModalityConstraint.push: id 7 (text:2) at position 4 is not allowed in state 'image' (3 image codes left)");
    for (const id of [EOI, BOI, EOS, PAD]) throwsCode(() => c.push(id), 'ERR_RANGE');
    throwsCode(() => c.push(layout.size), 'ERR_RANGE');
    throwsCode(() => c.push(-1), 'ERR_RANGE');
    throwsCode(() => c.push(1.5), 'ERR_ARG');
    throwsCode(() => c.push('5' as unknown as number), 'ERR_ARG');
    expect([c.state, c.imageCodesLeft, c.position]).toEqual(['image', 3, 4]);
  });

  test('pushPrompt: BOS only first; all or nothing; the grammar still applies', () => {
    const c = new ModalityConstraint(layout);
    expect(messageOf(() => c.pushPrompt([BOS, TEXT[1]!, BOS]))).toMatch(/^ModalityConstraint.pushPrompt: prompt index 2: id 1 \(BOS\) at position 2 is not allowed in state 'text'/);
    expect([c.state, c.position]).toEqual(['text', 0]);
    throwsCode(() => c.pushPrompt([BOS, BOI, CODES[0]!, EOI]), 'ERR_RANGE'); // image too short
    throwsCode(() => c.pushPrompt([BOS, BOI, CODES[0]!, CODES[0]!, CODES[0]!, CODES[0]!, CODES[0]!]), 'ERR_RANGE'); // too long
    throwsCode(() => c.pushPrompt([PAD]), 'ERR_RANGE');
    throwsCode(() => c.pushPrompt('abc' as unknown as number[]), 'ERR_ARG');
    expect(c.position).toBe(0);
    c.pushPrompt(Int32Array.from([BOS, TEXT[12]!]));
    c.pushPrompt([]);
    expect(c.position).toBe(2);
    throwsCode(() => c.pushPrompt([BOS]), 'ERR_RANGE'); // not at the start any more
    c.pushPrompt([EOS]);
    expect(c.state).toBe('done');
    throwsCode(() => c.pushPrompt([TEXT[0]!]), 'ERR_RANGE');
  });

  test('options and the model vocabulary size are validated', () => {
    throwsCode(() => new ModalityConstraint(layout, { allowText: 'no' as unknown as boolean }), 'ERR_ARG');
    throwsCode(() => new ModalityConstraint(layout, { allowText: false, allowImages: false }), 'ERR_ARG');
    expect(messageOf(() => new ModalityConstraint(textOnly, { allowText: false }))).toMatch(/no image tokenizer/);
    throwsCode(() => new ModalityConstraint(layout, { vocabSize: layout.size - 1 }), 'ERR_ARG');
    throwsCode(() => new ModalityConstraint(layout, { vocabSize: 1e3 + 0.5 }), 'ERR_ARG');
    throwsCode(() => new ModalityConstraint({} as VocabLayout), 'ERR_ARG');
    throwsCode(() => new ModalityConstraint(layout, null as unknown as ModalityConstraintOptions), 'ERR_ARG');
  });
});

describe('ModalityConstraint options', () => {
  test('a model vocabulary larger than the layout: longer masks, extra ids never allowed', () => {
    const c = new ModalityConstraint(layout, { vocabSize: layout.size + 7 });
    expect(c.allowed().length).toBe(layout.size + 7);
    expect(idsOf(c.allowed()).every((id) => id < layout.size)).toBe(true);
    expect(messageOf(() => c.push(layout.size + 3))).toMatch(/id 30 \(out-of-vocabulary:30\) at position 0 is not allowed/);
    throwsCode(() => c.push(layout.size + 7), 'ERR_RANGE');
  });

  test('allowImages false forbids BOI (prompts may still hold images); text-only layouts never allow BOI', () => {
    const c = new ModalityConstraint(layout, { allowImages: false });
    c.pushPrompt([BOS, BOI, ...CODES.slice(0, 4), EOI]);
    expect(c.state).toBe('text');
    expect(idsOf(c.allowed())).toEqual([EOS, ...TEXT]);
    expect(messageOf(() => c.push(BOI))).toMatch(/not allowed by the generation options in state 'text'/);
    const t = new ModalityConstraint(textOnly);
    expect(idsOf(t.allowed())).toEqual([EOS, ...TEXT]);
    expect(messageOf(() => t.pushPrompt([BOS, BOI]))).toMatch(/id 3 \(BOI\) at position 1 is not allowed in state 'text'/);
  });

  test('allowText false forces an image; stopAfterImage ends after a generated EOI only', () => {
    const c = new ModalityConstraint(layout, { allowText: false, stopAfterImage: true });
    c.pushPrompt([BOS, TEXT[0]!, BOI, ...CODES.slice(0, 4), EOI]); // a prompt image does not stop
    expect(c.state).toBe('text');
    expect(c.forced()).toBe(BOI);
    expect(idsOf(c.allowed())).toEqual([BOI]);
    c.push(BOI);
    for (let k = 0; k < 4; k++) c.push(CODES[8 - k]!);
    c.push(EOI);
    expect(c.state).toBe('done');
    // Without stopAfterImage it goes back to text, where only BOI is allowed again.
    const again = new ModalityConstraint(layout, { allowText: false });
    again.pushPrompt([BOS, BOI, ...CODES.slice(0, 4)]);
    again.push(EOI);
    expect([again.state, again.forced()]).toEqual(['text', BOI]);
  });
});

describe('random walks with sampleToken', () => {
  const options = validateSampling({ temperature: 1.5 }, 'test');

  /** Generates until done or `limit` ids, checking every drawn id against the mask first. */
  function walk(c: ModalityConstraint, rng: SeededRandom, limit: number): number[] {
    const out: number[] = [];
    while (c.state !== 'done' && out.length < limit) {
      const logits = Float32Array.from({ length: c.vocabSize }, () => (rng.float() - 0.5) * 6);
      logits[EOS] = -2; // long enough walks
      const mask = c.allowed();
      const id = sampleToken(logits, options, { rng, allowed: mask });
      expect(mask[id]).toBe(1);
      if (c.forced() !== null) expect(id).toBe(c.forced());
      c.push(id);
      out.push(id);
    }
    return out;
  }

  test('free generation: every image span is exactly tokensPerImage codes', () => {
    const rng = new SeededRandom(42);
    let images = 0;
    for (let run = 0; run < 40; run++) {
      const c = new ModalityConstraint(layout, { vocabSize: layout.size + 3 });
      c.pushPrompt([BOS]);
      const sequence = [BOS, ...walk(c, rng, 120)];
      const spans = imageSpans(sequence, layout);
      if (c.state === 'image') spans.pop(); // walk cut mid-image
      expect(spans.every((n) => n === 4)).toBe(true);
      images += spans.length;
    }
    expect(images).toBeGreaterThan(20);
  });

  test('(a) caption → image: prompt "BOS text… BOI" gives exactly 4 codes, EOI, done', () => {
    const rng = new SeededRandom(43);
    for (let run = 0; run < 20; run++) {
      const c = new ModalityConstraint(layout, { stopAfterImage: true });
      c.pushPrompt([BOS, TEXT[5]!, TEXT[6]!, BOI]);
      const generated = walk(c, rng, 100);
      expect(generated.length).toBe(5);
      expect(generated.slice(0, 4).every((id) => CODES.includes(id))).toBe(true);
      expect(generated[4]).toBe(EOI);
      expect(c.state).toBe('done');
    }
  });

  test('(b) image → text: prompt "BOS BOI codes EOI" with allowImages false gives text until EOS', () => {
    const rng = new SeededRandom(44);
    let ended = 0;
    for (let run = 0; run < 20; run++) {
      const c = new ModalityConstraint(layout, { allowImages: false });
      c.pushPrompt([BOS, BOI, CODES[1]!, CODES[2]!, CODES[3]!, CODES[4]!, EOI]);
      const generated = walk(c, rng, 200);
      expect(generated.every((id) => TEXT.includes(id) || id === EOS)).toBe(true);
      if (c.state === 'done') {
        expect(generated[generated.length - 1]).toBe(EOS);
        ended++;
      }
    }
    expect(ended).toBe(20);
  });
});
