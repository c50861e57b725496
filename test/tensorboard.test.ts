/**
 * TensorBoard event files: CRC-32C against published vectors, then the files read back with a
 * reader written here (TFRecord framing with a bit-by-bit CRC-32C, and the protobuf wire format by
 * hand) — the writer's own code is not used to read. A `--tensorboard` training run (tiny dense
 * model on the built-in shapes, which can generate): scalars equal to metrics.jsonl's, held-out
 * losses, the sample images and captions; a resume drops the events past its checkpoint.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import sharp from 'sharp';
import { builtinDataset } from '../lib/data/builtin';
import type { MixedModalDataset } from '../lib/data/dataset';
import { crc32c, maskedCrc32c } from '../lib/run/crc32c';
import type { EvalRecord, SampleRecord, StepRecord } from '../lib/run/records';
import { trainRun } from '../lib/run/run';
import { TensorBoardWriter } from '../lib/run/tensorboard';

let dir: string;
let shapes: MixedModalDataset;
const SMALL = { preset: 'tiny-dense', model: { dModel: 32, heads: 2, ffn: { dFF: 48 } }, batchSize: 2, seqLen: 64, device: 'cpu', lr: 3e-3, warmup: 4, evalBatches: 1 };

beforeAll(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'moma-tb-'));
  shapes = await builtinDataset({ trainImages: 64 });
});
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

// ---- an independent reader ----

/** CRC-32C bit by bit (no table). */
function crcBitwise(bytes: Uint8Array): number {
  let crc = ~0 >>> 0;
  for (const byte of bytes) {
    crc ^= byte;
    for (let k = 0; k < 8; k++) crc = (crc >>> 1) ^ (0x82f63b78 & -(crc & 1));
  }
  return ~crc >>> 0;
}

function masked(bytes: Uint8Array): number {
  const c = crcBitwise(bytes);
  return (((c >>> 15) | (c << 17)) + 0xa282ead8) >>> 0;
}

/** The records of a TFRecord file, every CRC checked. */
function tfRecords(bytes: Buffer): Buffer[] {
  const out: Buffer[] = [];
  let at = 0;
  while (at < bytes.length) {
    const length = Number(bytes.readBigUInt64LE(at));
    expect(bytes.readUInt32LE(at + 8)).toBe(masked(bytes.subarray(at, at + 8)));
    const data = bytes.subarray(at + 12, at + 12 + length);
    expect(bytes.readUInt32LE(at + 12 + length)).toBe(masked(data));
    out.push(data);
    at += 16 + length;
  }
  expect(at).toBe(bytes.length);
  return out;
}

type Field = { no: number; varint?: bigint; fixed64?: Buffer; fixed32?: Buffer; bytes?: Buffer };

/** The top-level fields of a protobuf message. */
function fields(buf: Buffer): Field[] {
  const out: Field[] = [];
  let at = 0;
  const varint = (): bigint => {
    let value = 0n;
    for (let shift = 0n; ; shift += 7n) {
      const b = buf[at++]!;
      value |= BigInt(b & 0x7f) << shift;
      if ((b & 0x80) === 0) return value;
    }
  };
  while (at < buf.length) {
    const key = Number(varint());
    const no = key >>> 3;
    switch (key & 7) {
      case 0: out.push({ no, varint: varint() }); break;
      case 1: out.push({ no, fixed64: buf.subarray(at, at + 8) }); at += 8; break;
      case 5: out.push({ no, fixed32: buf.subarray(at, at + 4) }); at += 4; break;
      case 2: {
        const n = Number(varint());
        out.push({ no, bytes: buf.subarray(at, at + n) });
        at += n;
        break;
      }
      default: throw new Error(`wire type ${key & 7}`);
    }
  }
  return out;
}

const one = (fs_: Field[], no: number): Field | undefined => fs_.find((f) => f.no === no);

interface ReadValue { tag: string; scalar?: number; image?: { height: number; width: number; colorspace: number; png: Buffer }; text?: string; plugin?: string; dtype?: number }
interface ReadEvent { wallTime: number; step: number; fileVersion?: string; values: ReadValue[] }

/** tensorflow.Event: wall_time 1, step 2, file_version 3, summary 5 { value 1 { tag 1, simple_value 2, image 4, tensor 8, metadata 9 } }. */
function readEvent(data: Buffer): ReadEvent {
  const top = fields(data);
  const event: ReadEvent = { wallTime: one(top, 1)!.fixed64!.readDoubleLE(0), step: Number(one(top, 2)?.varint ?? 0n), values: [] };
  const version = one(top, 3);
  if (version) event.fileVersion = version.bytes!.toString('utf8');
  const summary = one(top, 5);
  for (const v of summary ? fields(summary.bytes!).filter((f) => f.no === 1) : []) {
    const vf = fields(v.bytes!);
    const value: ReadValue = { tag: one(vf, 1)!.bytes!.toString('utf8') };
    const simple = one(vf, 2);
    if (simple) value.scalar = simple.fixed32!.readFloatLE(0);
    const image = one(vf, 4);
    if (image) {
      const f = fields(image.bytes!);
      value.image = { height: Number(one(f, 1)!.varint), width: Number(one(f, 2)!.varint), colorspace: Number(one(f, 3)!.varint), png: one(f, 4)!.bytes! };
    }
    const tensor = one(vf, 8);
    if (tensor) {
      const f = fields(tensor.bytes!);
      value.dtype = Number(one(f, 1)!.varint);
      value.text = one(f, 8)!.bytes!.toString('utf8');
      value.plugin = fields(one(fields(one(vf, 9)!.bytes!), 1)!.bytes!).map((p) => p.bytes!.toString('utf8'))[0];
    }
    event.values.push(value);
  }
  return event;
}

function eventsIn(runDir: string): { file: string; events: ReadEvent[] }[] {
  const tb = path.join(runDir, 'tensorboard');
  return fs.readdirSync(tb).sort().map((name) => ({ file: name, events: tfRecords(fs.readFileSync(path.join(tb, name))).map(readEvent) }));
}

function metrics(runDir: string): (StepRecord | EvalRecord | SampleRecord)[] {
  return fs.readFileSync(path.join(runDir, 'metrics.jsonl'), 'utf8').split('\n').filter((l) => l !== '').map((l) => JSON.parse(l));
}

// ---- tests ----

test('CRC-32C matches the published check values; the mask is TFRecord\'s', () => {
  const ascii = (s: string): Uint8Array => new TextEncoder().encode(s);
  expect(crc32c(ascii('123456789'))).toBe(0xe3069283);
  expect(crc32c(new Uint8Array(0))).toBe(0);
  // RFC 3720 (iSCSI) B.4: 32 bytes of zeros, of ones, ascending, descending
  expect(crc32c(new Uint8Array(32))).toBe(0x8a9136aa);
  expect(crc32c(new Uint8Array(32).fill(0xff))).toBe(0x62a8ab43);
  expect(crc32c(Uint8Array.from({ length: 32 }, (_, i) => i))).toBe(0x46dd794e);
  expect(crc32c(Uint8Array.from({ length: 32 }, (_, i) => 31 - i))).toBe(0x113fdb5c);
  const random = Uint8Array.from({ length: 1000 }, (_, i) => (i * 7919 + 13) & 0xff);
  expect(crc32c(random)).toBe(crcBitwise(random));
  expect(maskedCrc32c(random)).toBe(masked(random));
  expect(maskedCrc32c(ascii('123456789'))).toBe((((0xe3069283 >>> 15) | (0xe3069283 << 17)) + 0xa282ead8) >>> 0);
});

test('a writer\'s file: the file_version event first, then scalars, an image and text as written', async () => {
  const folder = path.join(dir, 'writer');
  const png = await sharp({ create: { width: 3, height: 2, channels: 3, background: { r: 255, g: 0, b: 0 } } }).png().toBuffer();
  const w = TensorBoardWriter.create(folder, { now: new Date(1_700_000_000_500), host: 'node 7/x' });
  w.summary(5, [{ tag: 'loss/overall', scalar: 2.5 }, { tag: 'train/lr', scalar: 1e-3 }], 1_700_000_001.25);
  w.summary(2 ** 40, [{ tag: 'img', image: { png, width: 3, height: 2, channels: 3 } }, { tag: 'note', text: 'a → b' }], 1_700_000_002);
  w.summary(6, [], 1_700_000_003);
  w.close();
  expect(path.basename(w.file)).toBe(`events.out.tfevents.1700000000.node_7_x.${process.pid}.0`);
  const events = tfRecords(fs.readFileSync(w.file)).map(readEvent);
  expect(events).toEqual([
    { wallTime: 1_700_000_000.5, step: 0, fileVersion: 'brain.Event:2', values: [] },
    { wallTime: 1_700_000_001.25, step: 5, values: [{ tag: 'loss/overall', scalar: 2.5 }, { tag: 'train/lr', scalar: Math.fround(1e-3) }] },
    { wallTime: 1_700_000_002, step: 2 ** 40, values: [
      { tag: 'img', image: { height: 2, width: 3, colorspace: 3, png } },
      { tag: 'note', text: 'a → b', dtype: 7, plugin: 'text' },
    ] },
  ]);
  // a second writer in the same second takes the next free name
  const again = TensorBoardWriter.create(folder, { now: new Date(1_700_000_000_900), host: 'node 7/x' });
  again.close();
  expect(path.basename(again.file)).toBe(`events.out.tfevents.1700000000.node_7_x.${process.pid}.1`);
  expect(() => w.summary(1, [{ tag: 'x', scalar: 1 }])).toThrow(/is closed/);
});

describe('a --tensorboard run of a model that can generate', () => {
  let runDir: string;
  const samples: SampleRecord[] = [];

  beforeAll(async () => {
    runDir = path.join(dir, 'run');
    const summary = await trainRun({ values: { ...SMALL, steps: 8, evalEvery: 4, checkpointEvery: 4, logEvery: 2, tensorboard: true, out: runDir }, dataset: shapes }, {
      onSample: (r) => samples.push(r),
    });
    expect(summary.tensorboard).toBe(path.join(runDir, 'tensorboard'));
  });

  test('the step scalars equal metrics.jsonl\'s step records (as float32), at their steps and times', () => {
    const [file, ...others] = eventsIn(runDir);
    expect(others).toEqual([]);
    const events = file!.events;
    expect(events[0]).toMatchObject({ step: 0, fileVersion: 'brain.Event:2' });
    const steps = metrics(runDir).filter((r): r is StepRecord => r.kind === 'step');
    expect(steps.map((r) => r.step)).toEqual([2, 4, 6, 8]);
    const stepEvents = events.filter((e) => e.values.some((v) => v.tag === 'loss/overall'));
    expect(stepEvents.map((e) => e.step)).toEqual([2, 4, 6, 8]);
    stepEvents.forEach((e, i) => {
      const r = steps[i]!;
      expect(e.wallTime).toBe(Date.parse(r.time!) / 1000);
      const scalars = Object.fromEntries(e.values.map((v) => [v.tag, v.scalar]));
      expect(scalars).toEqual({
        'loss/overall': Math.fround(r.loss), 'loss/text': Math.fround(r.lossPerModality.text!), 'loss/image': Math.fround(r.lossPerModality.image!),
        'train/lr': Math.fround(r.lr), 'train/grad_norm': Math.fround(r.gradNorm), 'train/tokens_per_second': Math.fround(r.tokensPerSecond),
        'train/mfu': Math.fround(r.mfu), 'train/image_fraction': Math.fround(r.imageFraction),
      });
    });
  });

  test('held-out losses at each evaluation, then the sample: the generated image and both captions', async () => {
    const events = eventsIn(runDir)[0]!.events;
    const evals = metrics(runDir).filter((r): r is EvalRecord => r.kind === 'eval');
    expect(evals.map((r) => r.step)).toEqual([4, 8]);
    const heldOut = events.filter((e) => e.values.some((v) => v.tag === 'heldout/overall'));
    expect(heldOut.map((e) => [e.step, Object.fromEntries(e.values.map((v) => [v.tag, v.scalar]))])).toEqual(evals.map((r) => [r.step, {
      'heldout/overall': Math.fround(r.loss), 'heldout/text': Math.fround(r.lossPerModality.text!), 'heldout/image': Math.fround(r.lossPerModality.image!),
    }]));
    const recorded = metrics(runDir).filter((r): r is SampleRecord => r.kind === 'sample');
    expect(recorded).toEqual(samples);
    expect(recorded.map((r) => [r.step, r.image, r.source, r.seed])).toEqual([
      [4, path.join('samples', 'step-000004.png'), path.join('samples', 'held-out.png'), 0], [8, path.join('samples', 'step-000008.png'), path.join('samples', 'held-out.png'), 0],
    ]);
    const sampleEvents = events.filter((e) => e.values.some((v) => v.tag === 'samples/caption_to_image'));
    expect(sampleEvents.map((e) => e.step)).toEqual([4, 8]);
    for (const [i, e] of sampleEvents.entries()) {
      const r = recorded[i]!;
      const [image, text] = e.values;
      expect(image!.image).toMatchObject({ width: 128, height: 128, colorspace: 3 });
      expect(image!.image!.png.equals(fs.readFileSync(path.join(runDir, r.image)))).toBe(true);
      const meta = await sharp(image!.image!.png).metadata();
      expect([meta.format, meta.width, meta.height]).toEqual(['png', 128, 128]);
      expect(text).toMatchObject({ tag: 'samples/captions', plugin: 'text', dtype: 7 });
      expect(text!.text).toBe(`**caption → image:** ${r.prompt}\n\n**held-out image → caption:** ${r.caption}`);
      expect(fs.readFileSync(path.join(runDir, 'samples', `step-00000${r.step}.txt`), 'utf8')).toContain(`caption → image (step-00000${r.step}.png): ${r.prompt}`);
    }
    // the prompt is a held-out caption of the built-in shapes
    expect(recorded[0]!.prompt).toMatch(/^(above: |below: )?an? (small|medium|large) \w+ (circle|square|triangle)/);
    expect(recorded[1]!.prompt).toBe(recorded[0]!.prompt);
  });

  test('a resume drops the events past its checkpoint (and a torn record), then writes a new file', async () => {
    const killed = path.join(dir, 'killed');
    fs.cpSync(runDir, killed, { recursive: true });
    // as if killed after step 8 before its checkpoint was complete, in the middle of an event
    fs.rmSync(path.join(killed, 'checkpoints', 'step-000008'), { recursive: true });
    const [first] = fs.readdirSync(path.join(killed, 'tensorboard'));
    fs.appendFileSync(path.join(killed, 'tensorboard', first!), Buffer.from([9, 0, 0, 0, 0, 0, 0, 0, 1, 2]));
    await trainRun({ resume: killed, dataset: shapes });
    const files = eventsIn(killed);
    expect(files).toHaveLength(2);
    expect(files[0]!.file).toBe(first);
    const lossSteps = (events: ReadEvent[]): number[] => events.filter((e) => e.values.some((v) => v.tag === 'loss/overall')).map((e) => e.step);
    expect(lossSteps(files[0]!.events)).toEqual([2, 4]);
    expect(lossSteps(files[1]!.events)).toEqual([6, 8]);
    expect(files[1]!.events[0]).toMatchObject({ step: 0, fileVersion: 'brain.Event:2' });
    // the resumed run's scalars equal the straight run's but for the timings
    const straight = eventsIn(runDir)[0]!.events.filter((e) => e.step > 4 && e.values.some((v) => v.tag === 'loss/overall'));
    const untimed = (e: ReadEvent): ReadValue[] => e.values.filter((v) => v.tag !== 'train/tokens_per_second' && v.tag !== 'train/mfu');
    expect(files[1]!.events.filter((e) => e.values.some((v) => v.tag === 'loss/overall')).map(untimed)).toEqual(straight.map(untimed));
    // and so is the sample at step 8: the same model and seed give the same image and caption
    const sampleAt8 = (d: string): unknown => {
      const { time: _t, seconds: _s, ...rest } = metrics(d).find((r): r is SampleRecord => r.kind === 'sample' && r.step === 8)!;
      return rest;
    };
    expect(sampleAt8(killed)).toEqual(sampleAt8(runDir));
    expect(fs.readFileSync(path.join(killed, 'samples', 'step-000008.png')).equals(fs.readFileSync(path.join(runDir, 'samples', 'step-000008.png')))).toBe(true);
  });
});
