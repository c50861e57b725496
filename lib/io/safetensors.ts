/**
 * safetensors files (https://huggingface.co/docs/safetensors): an 8-byte little-endian header
 * length, a JSON header { name: { dtype, shape, data_offsets: [begin, end] }, "__metadata__":
 * { string: string } } padded with spaces to a multiple of 8, then the raw little-endian data.
 * Writes are atomic (writeFileAtomic of ./files.ts); reads validate every field and name the file
 * and the problem in a MomaError('ERR_FILE'); as Hugging Face's reader, the tensors' data ranges
 * must tile the data area exactly (sorted by offset, each begins where the previous ends, the
 * first at 0, the last at the end of the file): overlapping ranges (two tensors sharing bytes),
 * gaps and bytes past the last tensor are refused, naming the two tensors. encodeSafetensors / decodeSafetensors work on
 * host typed arrays and bytes (no tensors), for small files such as tokenizer codebooks.
 */
import * as fs from 'fs';
import { tensor } from '../creation';
import { describeKey, describeValue } from '../checked';
import { MomaError } from '../errors';
import { Tensor } from '../tensor';
import { writeFileAtomic } from './files';

const DTYPES = { float32: 'F32', bfloat16: 'BF16', int32: 'I32', uint8: 'U8' } as const;
const SIZES: Record<string, number> = { F32: 4, BF16: 2, I32: 4, U8: 1 };

/** A tensor's raw host values as stored in the file; BF16 values are their raw 16-bit patterns. */
export type HostTensor =
  | { dtype: 'F32'; shape: number[]; data: Float32Array }
  | { dtype: 'BF16'; shape: number[]; data: Uint16Array }
  | { dtype: 'I32'; shape: number[]; data: Int32Array }
  | { dtype: 'U8'; shape: number[]; data: Uint8Array };

export interface HostSafetensors {
  metadata: Record<string, string>;
  tensors: Map<string, HostTensor>;
}

/** The bytes of a safetensors file holding `entries` (in order) and `metadata`; deterministic. */
export function encodeSafetensors(entries: Iterable<[string, HostTensor]>, metadata: Record<string, string> = {}): Buffer {
  const header: Record<string, unknown> = {};
  if (Object.keys(metadata).length) header.__metadata__ = metadata;
  const chunks: Buffer[] = [];
  let offset = 0;
  for (const [name, t] of entries) {
    const count = t.shape.reduce((a, b) => a * b, 1);
    if (name === '__metadata__' || SIZES[t.dtype] === undefined || t.data.length !== count) {
      throw new MomaError('ERR_ARG', `encodeSafetensors: tensor '${name}' (${String(t.dtype)} [${t.shape.join(', ')}], ${t.data.length} values) is not a valid entry`);
    }
    const bytes = Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength);
    header[name] = { dtype: t.dtype, shape: t.shape.slice(), data_offsets: [offset, offset + bytes.length] };
    chunks.push(bytes);
    offset += bytes.length;
  }
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - (json.length % 8)) % 8);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(Buffer.byteLength(json)));
  return Buffer.concat([len, Buffer.from(json), ...chunks]);
}

/** Serialises named tensors (read from their devices) into a safetensors file. */
export async function saveSafetensors(file: string, tensors: Map<string, Tensor>, metadata: Record<string, string> = {}): Promise<void> {
  const entries: [string, HostTensor][] = [];
  for (const [name, t] of tensors) {
    const dtype = DTYPES[t.dtype];
    const a = await t.toArray();
    if (dtype === 'BF16') {
      // values read as float32 are exact for bf16: keep the top 16 bits
      const f = a as Float32Array;
      const u32 = new Uint32Array(f.buffer, f.byteOffset, f.length);
      const u16 = new Uint16Array(f.length);
      for (let i = 0; i < f.length; i++) u16[i] = u32[i]! >>> 16;
      entries.push([name, { dtype, shape: t.shape.slice(), data: u16 }]);
    } else {
      entries.push([name, { dtype, shape: t.shape.slice(), data: a } as HostTensor]);
    }
  }
  writeFileAtomic(file, encodeSafetensors(entries, metadata));
}

export interface SafetensorsFile {
  metadata: Record<string, string>;
  tensors: Map<string, Tensor>;
}

function bad(file: string, what: string): MomaError {
  return new MomaError('ERR_FILE', `safetensors ${file}: ${what}`);
}

function isObject(value: unknown): value is Record<string, unknown> {
  return value !== null && typeof value === 'object' && !Array.isArray(value);
}

/** Parses and validates the bytes of a safetensors file (named `file` in errors) into host arrays (copies). */
export function decodeSafetensors(buf: Buffer, file: string): HostSafetensors {
  if (!Buffer.isBuffer(buf)) throw new MomaError('ERR_ARG', `decodeSafetensors: buf must be a Buffer (${String(file)})`);
  if (buf.length < 8) throw bad(file, `is ${buf.length} bytes, shorter than its 8-byte header length`);
  const n = Number(buf.readBigUInt64LE(0));
  if (n > buf.length - 8) throw bad(file, `header length ${n} runs past the end of the file (${buf.length} bytes)`);
  let header: unknown;
  try {
    header = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(buf.subarray(8, 8 + n)));
  } catch {
    throw bad(file, 'header is not valid JSON (UTF-8)');
  }
  if (!isObject(header)) throw bad(file, 'header is not a JSON object');
  const dataStart = 8 + n;
  const out: HostSafetensors = { metadata: {}, tensors: new Map() };
  const ranges: { name: string; begin: number; end: number }[] = [];
  for (const [name, entry] of Object.entries(header)) {
    const tensorName = `tensor ${describeKey(name)}`;  // names come from the file: quoted only when plain
    if (name === '__metadata__') {
      if (!isObject(entry) || Object.values(entry).some((v) => typeof v !== 'string')) throw bad(file, "'__metadata__' is not an object of strings");
      out.metadata = entry as Record<string, string>;
      continue;
    }
    if (!isObject(entry)) throw bad(file, `${tensorName} is not an object`);
    const e = entry as { dtype?: string; shape?: number[]; data_offsets?: number[] };
    const size = typeof e.dtype === 'string' && Object.hasOwn(SIZES, e.dtype) ? SIZES[e.dtype] : undefined;
    if (size === undefined) throw bad(file, `${tensorName} has unsupported dtype ${describeValue(e.dtype)}`);
    if (!Array.isArray(e.shape) || e.shape.some((d) => !Number.isInteger(d) || d < 0)) throw bad(file, `${tensorName} has a bad shape`);
    const [begin, end] = Array.isArray(e.data_offsets) ? e.data_offsets : [];
    const count = e.shape.reduce((a, b) => a * b, 1);
    if (!Number.isInteger(begin) || !Number.isInteger(end) || begin! < 0 || end! - begin! !== count * size || dataStart + end! > buf.length) {
      throw bad(file, `${tensorName} has data offsets [${describeValue(begin)}, ${describeValue(end)}] that do not fit its shape or the file`);
    }
    const shape = e.shape.slice();
    const bytes = buf.subarray(dataStart + begin!, dataStart + end!);
    let t: HostTensor;
    if (e.dtype === 'F32') t = { dtype: 'F32', shape, data: new Float32Array(count) };
    else if (e.dtype === 'I32') t = { dtype: 'I32', shape, data: new Int32Array(count) };
    else if (e.dtype === 'U8') t = { dtype: 'U8', shape, data: new Uint8Array(count) };
    else t = { dtype: 'BF16', shape, data: new Uint16Array(count) };
    new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength).set(bytes);
    out.tensors.set(name, t);
    ranges.push({ name, begin: begin!, end: end! });
  }
  checkTiling(file, ranges, buf.length - dataStart);
  return out;
}

/** Refuses data ranges that overlap, leave gaps, or do not end at the end of the data area (`dataBytes`). */
function checkTiling(file: string, ranges: { name: string; begin: number; end: number }[], dataBytes: number): void {
  ranges.sort((a, b) => a.begin - b.begin || a.end - b.end);
  let previous: { name: string; begin: number; end: number } | null = null;
  for (const r of ranges) {
    const at = previous?.end ?? 0;
    if (r.begin < at) {
      throw bad(file, `tensor ${describeKey(previous!.name)} (bytes [${previous!.begin}, ${at})) and tensor ${describeKey(r.name)} (bytes [${r.begin}, ${r.end})) overlap`);
    }
    if (r.begin > at) {
      throw bad(file, previous === null
        ? `tensor ${describeKey(r.name)} starts at data byte ${r.begin}, not 0 (a gap before the first tensor)`
        : `a gap of ${r.begin - at} bytes between tensor ${describeKey(previous.name)} (ends at ${at}) and tensor ${describeKey(r.name)} (starts at ${r.begin})`);
    }
    previous = r;
  }
  const end = previous?.end ?? 0;
  if (end !== dataBytes) {
    throw bad(file, `the data area is ${dataBytes} bytes but the tensors end at ${end}${previous === null ? '' : ` (last: tensor ${describeKey(previous.name)})`}: ${dataBytes - end} bytes belong to no tensor`);
  }
}

/** A decoded host tensor as a Tensor on `device` (BF16 as bfloat16, the rest as their dtype). */
export function hostToTensor(t: HostTensor, device: string): Tensor {
  const options = { shape: t.shape, device };
  return t.dtype === 'BF16' ? tensor(t.data, { ...options, dtype: 'bfloat16' }) : tensor(t.data, options);
}

/** The dtype a Tensor of `dtype` is stored as ('F32' for float32, …). */
export function safetensorsDtype(dtype: keyof typeof DTYPES): string {
  return DTYPES[dtype];
}

/** Reads a safetensors file into tensors on `device`. */
export function loadSafetensors(file: string, device = 'cpu'): SafetensorsFile {
  let buf: Buffer;
  try {
    buf = fs.readFileSync(file);
  } catch (err) {
    throw bad(file, `cannot be read (${(err as Error).message})`);
  }
  const host = decodeSafetensors(buf, file);
  const out: SafetensorsFile = { metadata: host.metadata, tensors: new Map() };
  try {
    for (const [name, t] of host.tensors) out.tensors.set(name, hostToTensor(t, device));
  } catch (err) {
    for (const t of out.tensors.values()) t.dispose();
    throw err;
  }
  return out;
}
