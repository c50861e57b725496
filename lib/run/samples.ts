/**
 * Sample generations at each held-out evaluation of a run whose model can generate: its
 * vocabulary has images, the data has a held-out split, and causal decoding needs no trained
 * auxiliary routers (no expert-choice group of more than one expert, no mixture-of-depths: dense
 * and one-expert-per-modality presets; a MoMa model gets its routers from `moma train-aux`
 * after training, and `moma generate` samples it then).
 *
 * The sample is fixed for the run: the first held-out document (of the first SEARCH_DRAWS) with a
 * caption and an image. Its caption is drawn as an image (lib/generate captionToImage, decoded to
 * a PNG by the run's image tokenizer) and its image is captioned (imageToCaption), both sampled
 * at temperature SAMPLE_TEMPERATURE with the run's seed: the same model gives the same sample.
 * Files in <run>/samples/: held-out.png (the document's image, written once), step-NNNNNN.png
 * (the generated image), step-NNNNNN.txt (prompt and both captions).
 */
import * as fs from 'fs';
import * as path from 'path';
import type { MixedModalDataset } from '../data/dataset';
import { splitDocument } from '../data/document';
import { ImageTokenizer } from '../data/image_tokenizer';
import { loadTextTokenizer, TextTokenizer } from '../data/text_tokenizer';
import type { VocabLayout } from '../data/vocab';
import { captionToImage, imageToCaption } from '../generate/generator';
import { writeFileAtomic } from '../io/files';
import { AuxRouters } from '../model/aux_router';
import type { Transformer } from '../model/transformer';
import type { SampleRecord } from './records';

export const SAMPLES_DIR = 'samples';
const SEARCH_DRAWS = 256;
export const SAMPLE_TEMPERATURE = 1;
const PNG_SCALE = 4;
const CAPTION_TOKENS = 64;

/** A generated sample: its record and the generated image (for TensorBoard). */
export interface RunSample {
  record: SampleRecord;
  png: Buffer;
  /** The generated PNG's size in pixels and its channels (RGB). */
  width: number;
  height: number;
  channels: number;
}

/** The first held-out document of the first SEARCH_DRAWS with a caption and an image: the caption's text ids and the image's codes. */
function heldOutPair(dataset: MixedModalDataset, seed: number): { text: number[]; codes: number[] } | null {
  const store = dataset.store('eval', seed);
  if (store === null) return null;
  const draws = Math.min(SEARCH_DRAWS, store.count);
  for (let k = 0; k < draws; k++) {
    const segments = splitDocument(dataset.layout, store.tokens(store.idAt(k)));
    const text = segments.find((s): s is { text: number[] } => 'text' in s && s.text.length > 0);
    const image = segments.find((s): s is { codes: number[] } => 'codes' in s && s.codes.length === dataset.layout.image?.tokenizer.tokensPerImage);
    if (text !== undefined && image !== undefined) return { text: text.text, codes: image.codes };
  }
  return null;
}

export class RunSampler {
  private constructor(
    private readonly model: Transformer,
    private readonly routing: AuxRouters,
    private readonly layout: VocabLayout,
    private readonly text: TextTokenizer,
    private readonly image: ImageTokenizer,
    private readonly prompt: string,
    private readonly codes: number[],
    private readonly dir: string,
    private readonly seed: number,
  ) {}

  /**
   * A sampler for a run whose tokenizer files are in `runDir`, or null when the run cannot
   * generate (see the module comment).
   */
  static create(model: Transformer, dataset: MixedModalDataset, runDir: string, seed: number): RunSampler | null {
    const { layout } = dataset;
    if (layout.image === null) return null;
    const tokenizerBytes = dataset.files[layout.image.tokenizer.file];
    if (tokenizerBytes === undefined) return null;
    const pair = heldOutPair(dataset, seed);
    if (pair === null) return null;
    const routing = new AuxRouters(model.config.dModel, model.routingSites(), { device: model.config.device });
    if (!routing.empty) {
      routing.dispose();
      return null;
    }
    try {
      const text = loadTextTokenizer(layout.text.tokenizer, runDir);
      const image = ImageTokenizer.fromBuffer(tokenizerBytes, layout.image.tokenizer.file);
      return new RunSampler(model, routing, layout, text, image, text.decode(pair.text), pair.codes, path.join(runDir, SAMPLES_DIR), seed);
    } catch (err) {
      routing.dispose();
      throw err;
    }
  }

  /** Generates the sample of the model after `step` training steps and writes its files. */
  async sample(step: number, tokens: number): Promise<RunSample> {
    const begun = process.hrtime.bigint();
    const options = { routing: this.routing, layout: this.layout, text: this.text, seed: this.seed, temperature: SAMPLE_TEMPERATURE };
    const drawn = await captionToImage(this.model, this.prompt, { ...options, image: this.image, scale: PNG_SCALE });
    const captioned = await imageToCaption(this.model, this.codes, { ...options, maxTokens: CAPTION_TOKENS });
    const name = `step-${String(step).padStart(6, '0')}`;
    const source = path.join(this.dir, 'held-out.png');
    fs.mkdirSync(this.dir, { recursive: true });
    if (!fs.existsSync(source)) writeFileAtomic(source, await this.image.decodeToPng(this.codes, PNG_SCALE));
    writeFileAtomic(path.join(this.dir, `${name}.png`), drawn.png);
    writeFileAtomic(path.join(this.dir, `${name}.txt`), [
      `step ${step} (seed ${this.seed}, temperature ${SAMPLE_TEMPERATURE})`,
      `caption → image (${name}.png): ${this.prompt}`,
      `image → caption (held-out.png): ${captioned.caption}`,
      '',
    ].join('\n'));
    const size = this.image.imageSize * PNG_SCALE;
    const record: SampleRecord = {
      kind: 'sample', time: new Date().toISOString(), step, tokens,
      prompt: this.prompt, image: path.join(SAMPLES_DIR, `${name}.png`),
      caption: captioned.caption, source: path.join(SAMPLES_DIR, 'held-out.png'),
      seed: this.seed, temperature: SAMPLE_TEMPERATURE, seconds: Number(process.hrtime.bigint() - begun) / 1e9,
    };
    return { record, png: drawn.png, width: size, height: size, channels: 3 };
  }

  dispose(): void {
    this.routing.dispose();
  }
}
