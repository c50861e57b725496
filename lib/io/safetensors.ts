/**
 * safetensors files (https://huggingface.co/docs/safetensors): an 8-byte little-endian header
 * length, a JSON header { name: { dtype, shape, data_offsets: [begin, end] }, "__metadata__":
 * { string: string } } padded with spaces to a multiple of 8, then the raw little-endian data.
 * Writes are atomic (temp file, fsync, rename); reads validate every field and name the file
 * and the problem in a MomaError('ERR_FILE').
 */
import * as fs from 'fs';
import * as path from 'path';
import { tensor } from '../creation';
import { MomaError } from '../errors';
import { Tensor } from '../tensor';

const DTYPES = { float32: 'F32', bfloat16: 'BF16', int32: 'I32', uint8: 'U8' } as const;
const SIZES: Record<string, number> = { F32: 4, BF16: 2, I32: 4, U8: 1 };

/** Writes `data` to `file` atomically: a temp file in the same folder, fsync, rename. */
export function writeFileAtomic(file: string, data: Buffer | string): void {
  const dir = path.dirname(file);
  fs.mkdirSync(dir, { recursive: true });
  const tmp = path.join(dir, `.${path.basename(file)}.${process.pid}.${Date.now()}.tmp`);
  const fd = fs.openSync(tmp, 'w');
  try {
    fs.writeSync(fd, typeof data === 'string' ? Buffer.from(data) : data);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  fs.renameSync(tmp, file);
}

/** Serialises named tensors (read from their devices) into a safetensors file. */
export async function saveSafetensors(file: string, tensors: Map<string, Tensor>, metadata: Record<string, string> = {}): Promise<void> {
  const header: Record<string, unknown> = {};
  if (Object.keys(metadata).length) header.__metadata__ = metadata;
  const chunks: Buffer[] = [];
  let offset = 0;
  for (const [name, t] of tensors) {
    const dtype = DTYPES[t.dtype];
    let bytes: Buffer;
    if (t.dtype === 'bfloat16') {
      // values read as float32 are exact for bf16: keep the top 16 bits
      const f = await t.toArray() as Float32Array;
      const u32 = new Uint32Array(f.buffer, f.byteOffset, f.length);
      const u16 = new Uint16Array(f.length);
      for (let i = 0; i < f.length; i++) u16[i] = u32[i]! >>> 16;
      bytes = Buffer.from(u16.buffer, u16.byteOffset, u16.byteLength);
    } else {
      const a = await t.toArray();
      bytes = Buffer.from(a.buffer, a.byteOffset, a.byteLength);
    }
    header[name] = { dtype, shape: t.shape.slice(), data_offsets: [offset, offset + bytes.length] };
    chunks.push(bytes);
    offset += bytes.length;
  }
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - (json.length % 8)) % 8);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(Buffer.byteLength(json)));
  writeFileAtomic(file, Buffer.concat([len, Buffer.from(json), ...chunks]));
}

export interface SafetensorsFile {
  metadata: Record<string, string>;
  tensors: Map<string, Tensor>;
}

function bad(file: string, what: string): MomaError {
  return new MomaError('ERR_FILE', `safetensors ${file}: ${what}`);
}

/** Reads a safetensors file into tensors on `device`. */
export function loadSafetensors(file: string, device = 'cpu'): SafetensorsFile {
  let buf: Buffer;
  try {
    buf = fs.readFileSync(file);
  } catch (err) {
    throw bad(file, `cannot be read (${(err as Error).message})`);
  }
  if (buf.length < 8) throw bad(file, `is ${buf.length} bytes, shorter than its 8-byte header length`);
  const n = Number(buf.readBigUInt64LE(0));
  if (n > buf.length - 8) throw bad(file, `header length ${n} runs past the end of the file (${buf.length} bytes)`);
  let header: Record<string, unknown>;
  try {
    header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8')) as Record<string, unknown>;
  } catch {
    throw bad(file, 'header is not valid JSON');
  }
  const dataStart = 8 + n;
  const out: SafetensorsFile = { metadata: {}, tensors: new Map() };
  try {
    for (const [name, entry] of Object.entries(header)) {
      if (name === '__metadata__') {
        out.metadata = entry as Record<string, string>;
        continue;
      }
      const e = entry as { dtype?: string; shape?: number[]; data_offsets?: number[] };
      const size = SIZES[e.dtype ?? ''];
      if (size === undefined) throw bad(file, `tensor '${name}' has unsupported dtype ${String(e.dtype)}`);
      if (!Array.isArray(e.shape) || e.shape.some((d) => !Number.isInteger(d) || d < 0)) throw bad(file, `tensor '${name}' has a bad shape`);
      const [begin, end] = e.data_offsets ?? [];
      const count = e.shape.reduce((a, b) => a * b, 1);
      if (!Number.isInteger(begin) || !Number.isInteger(end) || begin! < 0 || end! - begin! !== count * size || dataStart + end! > buf.length) {
        throw bad(file, `tensor '${name}' has data offsets [${String(begin)}, ${String(end)}] that do not fit its shape or the file`);
      }
      const bytes = Buffer.from(buf.subarray(dataStart + begin!, dataStart + end!));
      let t: Tensor;
      if (e.dtype === 'F32') t = tensor(new Float32Array(bytes.buffer, bytes.byteOffset, count), { shape: e.shape, device });
      else if (e.dtype === 'I32') t = tensor(new Int32Array(bytes.buffer, bytes.byteOffset, count), { shape: e.shape, device });
      else if (e.dtype === 'U8') t = tensor(new Uint8Array(bytes.buffer, bytes.byteOffset, count), { shape: e.shape, device });
      else t = tensor(new Uint16Array(bytes.buffer, bytes.byteOffset, count), { shape: e.shape, dtype: 'bfloat16', device });
      out.tensors.set(name, t);
    }
  } catch (err) {
    for (const t of out.tensors.values()) t.dispose();
    throw err;
  }
  return out;
}
