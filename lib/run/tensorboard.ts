/**
 * TensorBoard event files (`moma train --tensorboard`): <run>/tensorboard/events.out.tfevents.
 * <seconds>.<host>.<pid>.<n>, read by `tensorboard --logdir runs` (each run directory a run).
 *
 * A file is a sequence of TFRecords — uint64 length (little-endian), the masked CRC-32C of those 8
 * bytes, the data, the masked CRC-32C of the data (lib/run/crc32c.ts) — each holding one
 * tensorflow.Event protobuf: wall_time (1, double), step (2, int64), then file_version (3,
 * "brain.Event:2", the first event of every file) or summary (5). A Summary holds Values: tag (1)
 * with simple_value (2, float) for scalars, image (4: height 1, width 2, colorspace 3, the PNG 4),
 * or, for text, metadata (9: plugin_data 1 { plugin_name 1 = "text" }) and a scalar DT_STRING
 * tensor (8: dtype 1 = 7, tensor_shape 2 = {}, string_val 8). Field numbers are those of
 * tensorflow/core/util/event.proto, framework/summary.proto and framework/tensor.proto; the wire
 * format is written and read with @bufbuild/protobuf's BinaryWriter / BinaryReader.
 *
 * A resumed run truncates the event files to its checkpoint's step (truncateEvents) as it does
 * metrics.jsonl, so TensorBoard shows each step once, then appends a new file.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { BinaryReader, BinaryWriter, WireType } from '@bufbuild/protobuf/wire';
import { MomaError } from '../errors';
import { writeFileAtomic } from '../io/files';
import { maskedCrc32c } from './crc32c';
import type { EvalRecord, StepRecord } from './records';

export const EVENTS_DIR = 'tensorboard';
export const FILE_VERSION = 'brain.Event:2';

const EVENT = { wallTime: 1, step: 2, fileVersion: 3, summary: 5 } as const;
const SUMMARY = { value: 1 } as const;
const VALUE = { tag: 1, simpleValue: 2, image: 4, tensor: 8, metadata: 9 } as const;
const IMAGE = { height: 1, width: 2, colorspace: 3, encodedImage: 4 } as const;
const METADATA = { pluginData: 1 } as const;
const PLUGIN_DATA = { pluginName: 1 } as const;
const TENSOR = { dtype: 1, shape: 2, stringVal: 8 } as const;
const DT_STRING = 7;

/** One value of a summary: a scalar, a PNG image (channels 1 grey, 3 RGB, 4 RGBA), or text (markdown in TensorBoard's text tab). */
export type SummaryValue =
  | { tag: string; scalar: number }
  | { tag: string; image: { png: Uint8Array; width: number; height: number; channels: number } }
  | { tag: string; text: string };

export interface EventFields {
  /** Seconds since 1970. */
  wallTime: number;
  step: number;
  fileVersion?: string;
  values?: SummaryValue[];
}

function writeValue(w: BinaryWriter, value: SummaryValue): void {
  w.tag(SUMMARY.value, WireType.LengthDelimited).fork();
  w.tag(VALUE.tag, WireType.LengthDelimited).string(value.tag);
  if ('scalar' in value) {
    w.tag(VALUE.simpleValue, WireType.Bit32).float(value.scalar);
  } else if ('image' in value) {
    const { png, width, height, channels } = value.image;
    w.tag(VALUE.image, WireType.LengthDelimited).fork()
      .tag(IMAGE.height, WireType.Varint).int32(height)
      .tag(IMAGE.width, WireType.Varint).int32(width)
      .tag(IMAGE.colorspace, WireType.Varint).int32(channels)
      .tag(IMAGE.encodedImage, WireType.LengthDelimited).bytes(png)
      .join();
  } else {
    w.tag(VALUE.metadata, WireType.LengthDelimited).fork()
      .tag(METADATA.pluginData, WireType.LengthDelimited).fork()
      .tag(PLUGIN_DATA.pluginName, WireType.LengthDelimited).string('text')
      .join()
      .join();
    w.tag(VALUE.tensor, WireType.LengthDelimited).fork()
      .tag(TENSOR.dtype, WireType.Varint).int32(DT_STRING)
      .tag(TENSOR.shape, WireType.LengthDelimited).bytes(new Uint8Array(0))
      .tag(TENSOR.stringVal, WireType.LengthDelimited).bytes(new TextEncoder().encode(value.text))
      .join();
  }
  w.join();
}

/** The tensorflow.Event protobuf bytes of `event`. */
export function encodeEvent(event: EventFields): Uint8Array {
  const w = new BinaryWriter();
  w.tag(EVENT.wallTime, WireType.Bit64).double(event.wallTime);
  w.tag(EVENT.step, WireType.Varint).int64(event.step);
  if (event.fileVersion !== undefined) w.tag(EVENT.fileVersion, WireType.LengthDelimited).string(event.fileVersion);
  if (event.values !== undefined) {
    w.tag(EVENT.summary, WireType.LengthDelimited).fork();
    for (const value of event.values) writeValue(w, value);
    w.join();
  }
  return w.finish();
}

/** `data` as one TFRecord: length, masked CRC of the length, data, masked CRC of the data. */
export function frameRecord(data: Uint8Array): Buffer {
  const out = Buffer.alloc(8 + 4 + data.length + 4);
  out.writeBigUInt64LE(BigInt(data.length), 0);
  out.writeUInt32LE(maskedCrc32c(out.subarray(0, 8)), 8);
  out.set(data, 12);
  out.writeUInt32LE(maskedCrc32c(data), 12 + data.length);
  return out;
}

/** The records of a TFRecord file's bytes, with where each ends; stops at the first torn or corrupt one (a killed writer's last). */
function readRecords(bytes: Buffer): { data: Buffer; end: number }[] {
  const out: { data: Buffer; end: number }[] = [];
  let at = 0;
  while (at + 12 <= bytes.length) {
    const length = bytes.readBigUInt64LE(at);
    if (bytes.readUInt32LE(at + 8) !== maskedCrc32c(bytes.subarray(at, at + 8))) break;
    const end = at + 12 + Number(length) + 4;
    if (length > BigInt(bytes.length) || end > bytes.length) break;
    const data = bytes.subarray(at + 12, end - 4);
    if (bytes.readUInt32LE(end - 4) !== maskedCrc32c(data)) break;
    out.push({ data, end });
    at = end;
  }
  return out;
}

/** The step field of an Event's bytes (0 when absent, as protobuf defaults it). */
function stepOf(data: Uint8Array): number {
  const r = new BinaryReader(data);
  let step = 0;
  while (r.pos < r.len) {
    const [field, wireType] = r.tag();
    if (field === EVENT.step && wireType === WireType.Varint) step = Number(r.int64());
    else r.skip(wireType);
  }
  return step;
}

function eventFiles(dir: string): string[] {
  if (!fs.existsSync(dir)) return [];
  return fs.readdirSync(dir).filter((name) => name.startsWith('events.out.tfevents.')).sort().map((name) => path.join(dir, name));
}

/**
 * Drops the events past `step` (and a torn last record) from the event files in `dir`: what a
 * resume from the checkpoint at `step` does, as it does to metrics.jsonl. Returns the files changed.
 */
export function truncateEvents(dir: string, step: number): string[] {
  const changed: string[] = [];
  for (const file of eventFiles(dir)) {
    const bytes = fs.readFileSync(file);
    const records = readRecords(bytes);
    const kept = records.filter((r) => stepOf(r.data) <= step);
    if (kept.length === records.length && (records.length === 0 ? 0 : records[records.length - 1]!.end) === bytes.length) continue;
    writeFileAtomic(file, Buffer.concat(kept.map((r) => frameRecord(r.data))));
    changed.push(file);
  }
  return changed;
}

/** Appends events to a new event file in a folder (created when missing); the file opens with the file_version event. */
export class TensorBoardWriter {
  private fd: number | null;

  private constructor(readonly file: string, fd: number) {
    this.fd = fd;
  }

  /** A new event file events.out.tfevents.<seconds>.<host>.<pid>.<n> in `dir` (n: the first free number). */
  static create(dir: string, options: { now?: Date; host?: string } = {}): TensorBoardWriter {
    const now = options.now ?? new Date();
    const host = (options.host ?? os.hostname()).replace(/[^A-Za-z0-9._-]/g, '_');
    try {
      fs.mkdirSync(dir, { recursive: true });
      for (let n = 0; ; n++) {
        const file = path.join(dir, `events.out.tfevents.${Math.floor(now.getTime() / 1000)}.${host}.${process.pid}.${n}`);
        if (fs.existsSync(file)) continue;
        const writer = new TensorBoardWriter(file, fs.openSync(file, 'wx'));
        writer.write({ wallTime: now.getTime() / 1000, step: 0, fileVersion: FILE_VERSION });
        return writer;
      }
    } catch (err) {
      if (err instanceof MomaError) throw err;
      throw new MomaError('ERR_FILE', `tensorboard: cannot create an event file in ${dir} (${(err as Error).message})`);
    }
  }

  write(event: EventFields): void {
    if (this.fd === null) throw new MomaError('ERR_ARG', `tensorboard: ${this.file} is closed`);
    try {
      fs.writeSync(this.fd, frameRecord(encodeEvent(event)));
    } catch (err) {
      throw new MomaError('ERR_FILE', `tensorboard: cannot write to ${this.file} (${(err as Error).message})`);
    }
  }

  /** A summary event of `values` at `step` (none written when `values` is empty). */
  summary(step: number, values: SummaryValue[], wallTime: number = Date.now() / 1000): void {
    if (values.length > 0) this.write({ wallTime, step, values });
  }

  close(): void {
    if (this.fd !== null) fs.closeSync(this.fd);
    this.fd = null;
  }
}

function finiteScalars(entries: [string, number | null | undefined][]): SummaryValue[] {
  return entries.filter((e): e is [string, number] => typeof e[1] === 'number' && Number.isFinite(e[1])).map(([tag, scalar]) => ({ tag, scalar }));
}

/** Seconds since 1970 of a record's ISO time (now when it has none). */
export function wallTimeOf(record: { time?: string }): number {
  const ms = record.time === undefined ? NaN : Date.parse(record.time);
  return (Number.isFinite(ms) ? ms : Date.now()) / 1000;
}

/**
 * The scalars of a step record: loss/overall and loss/<modality>, train/lr, train/grad_norm,
 * train/tokens_per_second, train/mfu, train/image_fraction, and with routing statistics
 * routing_rows/layer<L>/group<g>/expert<e> (rows the expert took in the step's micro-batch) and
 * routing_gate/… (their mean gate). Non-finite values are left out.
 */
export function stepScalars(record: StepRecord): SummaryValue[] {
  return finiteScalars([
    ['loss/overall', record.loss],
    ...Object.entries(record.lossPerModality ?? {}).map(([name, v]): [string, number] => [`loss/${name}`, v]),
    ['train/lr', record.lr],
    ['train/grad_norm', record.gradNorm],
    ['train/tokens_per_second', record.tokensPerSecond],
    ['train/mfu', record.mfu],
    ['train/image_fraction', record.imageFraction],
    ...(record.routing ?? []).flatMap((e): [string, number][] => {
      const at = `layer${e.layer}/group${e.group}/expert${e.expert}`;
      return [[`routing_rows/${at}`, e.rows], [`routing_gate/${at}`, e.meanGate]];
    }),
  ]);
}

/** The scalars of a held-out evaluation: heldout/overall and heldout/<modality>. */
export function evalScalars(record: EvalRecord): SummaryValue[] {
  return finiteScalars([['heldout/overall', record.loss], ...Object.entries(record.lossPerModality ?? {}).map(([name, v]): [string, number] => [`heldout/${name}`, v])]);
}
