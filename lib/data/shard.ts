/**
 * Binary token shards: the documents of a shard set as one file each, read lazily document by
 * document. Everything is little-endian.
 *
 *   offset  size  field
 *   ------  ----  ---------------------------------------------------------------------------
 *        0     8  magic "MOMASHRD"
 *        8     4  format version, u32 = 1
 *       12     4  token dtype, u32: 1 = uint16 (vocabulary size <= 65,536), 2 = uint32
 *       16    16  vocabulary hash: the first 16 bytes of the layout's SHA-256 (raw bytes)
 *       32     8  document count D, u64
 *       40     8  token count T, u64
 *       48     8  image-token count, u64 (the sum of the index's image counts)
 *       56     4  reserved, 0
 *       60     4  CRC32 of bytes [0, 60)
 *       64   T·w  the tokens, w = 2 or 4 bytes each, documents back to back
 *   64+T·w  D·24  document index, per document:
 *                   token offset u64 (in tokens, from the start of the token area),
 *                   token length u32 (>= 1), image-token count u32,
 *                   CRC32 of the document's token bytes u32, reserved u32 = 0
 *           16    footer: CRC32 of the index bytes u32, magic "MOMAEND\0", reserved u32 = 0
 *
 * The file size is therefore exactly 64 + T·w + 24·D + 16: a reader detects truncation from the
 * header and the size alone. Documents are contiguous (document i+1 starts where i ends, the
 * first at 0, the last ends at T), which the reader checks; each document's CRC is checked when
 * it is read. Changes from the first sketch of this format: the header also records the
 * image-token count (shard set summaries need no index scan) and its CRC is the last header
 * field, so it covers every header byte including the reserved ones.
 *
 * ShardWriter streams documents to a temp file next to the target (index kept in memory),
 * writes the header last, fsyncs and renames. ShardReader keeps one file descriptor and the
 * parsed index; `read(i)` is one positioned read of that document's bytes.
 */
import { createHash } from 'crypto';
import * as fs from 'fs';
import * as path from 'path';
import * as zlib from 'zlib';
import { MomaError } from '../errors';
import { modalityOfId, VocabLayout } from './vocab';
import { at } from '../checked';

export const SHARD_MAGIC = 'MOMASHRD';
export const SHARD_END_MAGIC = 'MOMAEND\0';
export const SHARD_VERSION = 1;
export const SHARD_HEADER_BYTES = 64;
export const SHARD_INDEX_ENTRY_BYTES = 24;
export const SHARD_FOOTER_BYTES = 16;

export type ShardDtype = 'uint16' | 'uint32';

const DTYPE_CODES: Record<ShardDtype, number> = { uint16: 1, uint32: 2 };
const HEADER_CRC_AT = 60;
const FLUSH_BYTES = 1 << 20;

/** The token dtype a vocabulary needs. */
export function shardDtypeFor(layout: VocabLayout): ShardDtype {
  return layout.size <= 65536 ? 'uint16' : 'uint32';
}

/** The 16 vocabulary-hash bytes a shard records for `layout`. */
function vocabHashBytes(layout: VocabLayout): Buffer {
  if (typeof layout.hash !== 'string' || !/^[0-9a-f]{64}$/.test(layout.hash)) {
    throw new MomaError('ERR_ARG', `shard: the vocabulary layout has no valid SHA-256 hash (got ${JSON.stringify(layout.hash)})`);
  }
  return Buffer.from(layout.hash.slice(0, 32), 'hex');
}

/** Expected file size of a shard with these counts. */
export function shardFileBytes(documents: number, tokens: number, dtype: ShardDtype): number {
  return SHARD_HEADER_BYTES + tokens * (dtype === 'uint16' ? 2 : 4) + documents * SHARD_INDEX_ENTRY_BYTES + SHARD_FOOTER_BYTES;
}

export interface ShardStats {
  /** The shard's path. */
  file: string;
  documents: number;
  tokens: number;
  imageTokens: number;
  bytes: number;
  /** SHA-256 (hex) of the whole file. */
  sha256: string;
}

/** Writes one shard: append documents, then finish() (atomic rename) or abort(). */
export class ShardWriter {
  readonly dtype: ShardDtype;
  private readonly tmp: string;
  private fd: number | null;
  private readonly width: number;
  private readonly hash: Buffer;
  private index = Buffer.alloc(SHARD_INDEX_ENTRY_BYTES * 256);
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  private documents_ = 0;
  private tokens_ = 0;
  private imageTokens_ = 0;

  private constructor(readonly file: string, readonly layout: VocabLayout) {
    if (typeof file !== 'string' || file.length === 0) throw new MomaError('ERR_ARG', `ShardWriter: file must be a non-empty path, got ${JSON.stringify(file)}`);
    this.hash = vocabHashBytes(layout);
    this.dtype = shardDtypeFor(layout);
    this.width = this.dtype === 'uint16' ? 2 : 4;
    this.tmp = path.join(path.dirname(file), `.${path.basename(file)}.${process.pid}.tmp`);
    try {
      fs.mkdirSync(path.dirname(file), { recursive: true });
      this.fd = fs.openSync(this.tmp, 'w+');
      fs.writeSync(this.fd, Buffer.alloc(SHARD_HEADER_BYTES), 0, SHARD_HEADER_BYTES, 0);
    } catch (err) {
      throw new MomaError('ERR_FILE', `ShardWriter ${file}: cannot create ${this.tmp} (${(err as Error).message})`);
    }
  }

  /** Starts a shard at `file` for documents in `layout`'s id space. */
  static create(file: string, layout: VocabLayout): ShardWriter {
    return new ShardWriter(file, layout);
  }

  get documents(): number {
    return this.documents_;
  }

  get tokens(): number {
    return this.tokens_;
  }

  get imageTokens(): number {
    return this.imageTokens_;
  }

  /** Appends one document (at least one id, every id inside the vocabulary). */
  append(ids: ArrayLike<number>): void {
    const fd = this.openFd('append');
    if (ids === null || typeof ids !== 'object' || !Number.isInteger(ids.length)) throw new MomaError('ERR_ARG', `ShardWriter ${this.file}: document ${this.documents_} must be an array of token ids`);
    if (ids.length === 0) throw new MomaError('ERR_ARG', `ShardWriter ${this.file}: document ${this.documents_} is empty`);
    if (ids.length > 0xffffffff) throw new MomaError('ERR_RANGE', `ShardWriter ${this.file}: document ${this.documents_} has ${ids.length} tokens, more than a u32 length`);
    const bytes = Buffer.allocUnsafe(ids.length * this.width);
    let images = 0;
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i];
      if (id === undefined || !Number.isInteger(id) || id < 0 || id >= this.layout.size) {
        throw new MomaError('ERR_RANGE', `ShardWriter ${this.file}: document ${this.documents_} id ${String(id)} at position ${i} is outside the vocabulary [0, ${this.layout.size})`);
      }
      if (this.width === 2) bytes.writeUInt16LE(id, 2 * i);
      else bytes.writeUInt32LE(id, 4 * i);
      if (modalityOfId(this.layout, id) === 1) images++;
    }
    const entryAt = this.documents_ * SHARD_INDEX_ENTRY_BYTES;
    if (entryAt + SHARD_INDEX_ENTRY_BYTES > this.index.length) {
      const grown = Buffer.alloc(this.index.length * 2);
      this.index.copy(grown);
      this.index = grown;
    }
    this.index.writeBigUInt64LE(BigInt(this.tokens_), entryAt);
    this.index.writeUInt32LE(ids.length, entryAt + 8);
    this.index.writeUInt32LE(images, entryAt + 12);
    this.index.writeUInt32LE(zlib.crc32(bytes), entryAt + 16);
    this.index.writeUInt32LE(0, entryAt + 20);
    this.pending.push(bytes);
    this.pendingBytes += bytes.length;
    this.documents_++;
    this.tokens_ += ids.length;
    this.imageTokens_ += images;
    if (this.pendingBytes >= FLUSH_BYTES) this.flush(fd);
  }

  /** Writes index, footer and header, fsyncs, renames into place; returns the shard's stats. */
  finish(): ShardStats {
    const fd = this.openFd('finish');
    try {
      this.flush(fd);
      const index = this.index.subarray(0, this.documents_ * SHARD_INDEX_ENTRY_BYTES);
      const footer = Buffer.alloc(SHARD_FOOTER_BYTES);
      footer.writeUInt32LE(zlib.crc32(index), 0);
      footer.write(SHARD_END_MAGIC, 4, 'latin1');
      const tail = Buffer.concat([index, footer]);
      const tokenEnd = SHARD_HEADER_BYTES + this.tokens_ * this.width;
      fs.writeSync(fd, tail, 0, tail.length, tokenEnd);
      const header = this.header();
      fs.writeSync(fd, header, 0, header.length, 0);
      fs.fsyncSync(fd);
      const bytes = tokenEnd + tail.length;
      const sha256 = this.hashFile(fd, bytes);
      fs.closeSync(fd);
      this.fd = null;
      fs.renameSync(this.tmp, this.file);
      return { file: this.file, documents: this.documents_, tokens: this.tokens_, imageTokens: this.imageTokens_, bytes, sha256 };
    } catch (err) {
      this.abort();
      if (err instanceof MomaError) throw err;
      throw new MomaError('ERR_FILE', `ShardWriter ${this.file}: cannot write (${(err as Error).message})`);
    }
  }

  /** Drops the temp file (safe to call more than once). */
  abort(): void {
    if (this.fd !== null) {
      fs.closeSync(this.fd);
      this.fd = null;
    }
    fs.rmSync(this.tmp, { force: true });
  }

  private openFd(op: string): number {
    if (this.fd === null) throw new MomaError('ERR_DISPOSED', `ShardWriter ${this.file}: ${op} after finish() or abort()`);
    return this.fd;
  }

  private flush(fd: number): void {
    if (this.pending.length === 0) return;
    const position = SHARD_HEADER_BYTES + (this.tokens_ * this.width - this.pendingBytes);
    try {
      fs.writevSync(fd, this.pending, position);
    } catch (err) {
      throw new MomaError('ERR_FILE', `ShardWriter ${this.file}: cannot write tokens (${(err as Error).message})`);
    }
    this.pending = [];
    this.pendingBytes = 0;
  }

  private header(): Buffer {
    const h = Buffer.alloc(SHARD_HEADER_BYTES);
    h.write(SHARD_MAGIC, 0, 'latin1');
    h.writeUInt32LE(SHARD_VERSION, 8);
    h.writeUInt32LE(DTYPE_CODES[this.dtype], 12);
    this.hash.copy(h, 16);
    h.writeBigUInt64LE(BigInt(this.documents_), 32);
    h.writeBigUInt64LE(BigInt(this.tokens_), 40);
    h.writeBigUInt64LE(BigInt(this.imageTokens_), 48);
    h.writeUInt32LE(zlib.crc32(h.subarray(0, HEADER_CRC_AT)), HEADER_CRC_AT);
    return h;
  }

  private hashFile(fd: number, bytes: number): string {
    const hash = createHash('sha256');
    const chunk = Buffer.allocUnsafe(Math.min(bytes, 8 << 20));
    for (let at = 0; at < bytes;) {
      const n = fs.readSync(fd, chunk, 0, Math.min(chunk.length, bytes - at), at);
      if (n <= 0) throw new MomaError('ERR_FILE', `ShardWriter ${this.file}: read back ${at} of ${bytes} bytes`);
      hash.update(chunk.subarray(0, n));
      at += n;
    }
    return hash.digest('hex');
  }
}

/** An open shard: validated header and index, documents read on demand. */
export class ShardReader {
  readonly dtype: ShardDtype;
  readonly documents: number;
  readonly tokens: number;
  readonly imageTokens: number;
  /** File size in bytes. */
  readonly bytes: number;
  private fd: number | null;
  private readonly offsets: Float64Array;
  private readonly lengths: Uint32Array;
  private readonly images: Uint32Array;
  private readonly crcs: Uint32Array;

  private constructor(readonly file: string, readonly layout: VocabLayout, fd: number) {
    this.fd = fd;
    const bad = (what: string): MomaError => new MomaError('ERR_FILE', `shard ${file}: ${what}`);
    const size = fs.fstatSync(fd).size;
    this.bytes = size;
    if (size < SHARD_HEADER_BYTES) throw bad(`truncated: ${size} bytes, shorter than the ${SHARD_HEADER_BYTES}-byte header`);
    const h = this.readAt(0, SHARD_HEADER_BYTES, 'the header');
    if (h.toString('latin1', 0, 8) !== SHARD_MAGIC) throw bad(`not a moma shard (magic ${magicText(h.subarray(0, 8))}, expected "${SHARD_MAGIC}")`);
    const version = h.readUInt32LE(8);
    const storedCrc = h.readUInt32LE(HEADER_CRC_AT);
    const crc = zlib.crc32(h.subarray(0, HEADER_CRC_AT));
    if (storedCrc !== crc) throw bad(`header checksum mismatch (stored ${hex32(storedCrc)}, computed ${hex32(crc)}; the header says format version ${version}): the header is corrupt`);
    if (version !== SHARD_VERSION) throw bad(`format version ${version} is not supported (this reader reads version ${SHARD_VERSION})`);
    const dtypeCode = h.readUInt32LE(12);
    const dtype = (Object.keys(DTYPE_CODES) as ShardDtype[]).find((k) => DTYPE_CODES[k] === dtypeCode);
    if (dtype === undefined) throw bad(`token dtype code ${dtypeCode} is unknown (1 = uint16, 2 = uint32)`);
    const stored = h.subarray(16, 32).toString('hex');
    const expected = vocabHashBytes(layout).toString('hex');
    if (stored !== expected) {
      throw bad(`written with vocabulary ${stored}… but the expected vocabulary is ${expected}… (vocab.json hash ${layout.hash}): the shard belongs to another vocabulary or tokenizer`);
    }
    if (dtype !== shardDtypeFor(layout)) throw bad(`token dtype ${dtype} does not fit the vocabulary of ${layout.size} ids (expected ${shardDtypeFor(layout)})`);
    this.dtype = dtype;
    const count = (at: number, what: string): number => {
      const v = h.readBigUInt64LE(at);
      if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw bad(`${what} ${v} is too large`);
      return Number(v);
    };
    this.documents = count(32, 'document count');
    this.tokens = count(40, 'token count');
    this.imageTokens = count(48, 'image-token count');
    if (h.readUInt32LE(56) !== 0) throw bad('reserved header field is not 0');
    const width = dtype === 'uint16' ? 2 : 4;
    const expectedSize = shardFileBytes(this.documents, this.tokens, dtype);
    if (size !== expectedSize) {
      throw bad(`${size < expectedSize ? 'truncated' : 'has extra bytes'}: the header (${this.documents} documents, ${this.tokens} ${dtype} tokens) implies ${expectedSize} bytes, the file has ${size}`);
    }
    const indexAt = SHARD_HEADER_BYTES + this.tokens * width;
    const tail = this.readAt(indexAt, this.documents * SHARD_INDEX_ENTRY_BYTES + SHARD_FOOTER_BYTES, 'the index');
    const index = tail.subarray(0, this.documents * SHARD_INDEX_ENTRY_BYTES);
    const footer = tail.subarray(index.length);
    if (footer.toString('latin1', 4, 12) !== SHARD_END_MAGIC) throw bad(`footer magic at byte ${indexAt + index.length + 4} is ${magicText(footer.subarray(4, 12))}, expected "MOMAEND\\0"`);
    if (footer.readUInt32LE(12) !== 0) throw bad('reserved footer field is not 0');
    const indexCrc = zlib.crc32(index);
    if (footer.readUInt32LE(0) !== indexCrc) throw bad(`document index checksum mismatch (stored ${hex32(footer.readUInt32LE(0))}, computed ${hex32(indexCrc)}; index at byte ${indexAt}): the index is corrupt`);
    this.offsets = new Float64Array(this.documents);
    this.lengths = new Uint32Array(this.documents);
    this.images = new Uint32Array(this.documents);
    this.crcs = new Uint32Array(this.documents);
    let next = 0;
    let images = 0;
    for (let d = 0; d < this.documents; d++) {
      const at = d * SHARD_INDEX_ENTRY_BYTES;
      const offset = Number(index.readBigUInt64LE(at));
      const length = index.readUInt32LE(at + 8);
      const imageCount = index.readUInt32LE(at + 12);
      const where = `index entry ${d} (byte ${indexAt + at})`;
      if (offset !== next) throw bad(`${where}: document starts at token ${offset}, expected ${next} (documents are contiguous)`);
      if (length < 1 || offset + length > this.tokens) throw bad(`${where}: length ${length} at token ${offset} is outside the token area of ${this.tokens} tokens`);
      if (imageCount > length) throw bad(`${where}: ${imageCount} image tokens in a document of ${length}`);
      if (index.readUInt32LE(at + 20) !== 0) throw bad(`${where}: reserved field is not 0`);
      this.offsets[d] = offset;
      this.lengths[d] = length;
      this.images[d] = imageCount;
      this.crcs[d] = index.readUInt32LE(at + 16);
      next = offset + length;
      images += imageCount;
    }
    if (next !== this.tokens) throw bad(`the documents cover ${next} tokens, the header says ${this.tokens}`);
    if (images !== this.imageTokens) throw bad(`the index counts ${images} image tokens, the header says ${this.imageTokens}`);
  }

  /** Opens and validates a shard written for `layout` (ERR_FILE naming the file and the problem). */
  static open(file: string, layout: VocabLayout): ShardReader {
    if (typeof file !== 'string' || file.length === 0) throw new MomaError('ERR_ARG', `ShardReader.open: file must be a non-empty path, got ${JSON.stringify(file)}`);
    if (layout === null || typeof layout !== 'object' || !Number.isInteger(layout.size)) throw new MomaError('ERR_ARG', `ShardReader.open ${file}: expected a VocabLayout`);
    let fd: number;
    try {
      fd = fs.openSync(file, 'r');
    } catch (err) {
      throw new MomaError('ERR_FILE', `shard ${file}: cannot be opened (${(err as Error).message})`);
    }
    try {
      return new ShardReader(file, layout, fd);
    } catch (err) {
      fs.closeSync(fd);
      throw err;
    }
  }

  /** Token length of document `doc`. */
  length(doc: number): number {
    return at(this.lengths, this.checkDoc(doc, 'length'), `shard ${this.file}: length`);
  }

  /** Image-token count of document `doc` (from the index). */
  imageCount(doc: number): number {
    return at(this.images, this.checkDoc(doc, 'imageCount'), `shard ${this.file}: imageCount`);
  }

  /** Reads document `doc`, verifying its checksum and that every id is in the vocabulary. */
  read(doc: number): Uint16Array | Uint32Array {
    this.checkDoc(doc, 'read');
    const where = `shard ${this.file}: read`;
    const width = this.dtype === 'uint16' ? 2 : 4;
    const length = at(this.lengths, doc, where);
    const byteOffset = SHARD_HEADER_BYTES + at(this.offsets, doc, where) * width;
    const bytes = this.readAt(byteOffset, length * width, `document ${doc}`);
    const crc = zlib.crc32(bytes);
    const stored = at(this.crcs, doc, where);
    if (crc !== stored) {
      throw new MomaError('ERR_FILE', `shard ${this.file}: document ${doc} (byte offset ${byteOffset}, ${length} tokens) checksum mismatch (stored ${hex32(stored)}, computed ${hex32(crc)}): the data is corrupt`);
    }
    const ids = this.dtype === 'uint16' ? new Uint16Array(bytes.buffer, bytes.byteOffset, length) : new Uint32Array(bytes.buffer, bytes.byteOffset, length);
    let images = 0;
    for (const [i, id] of ids.entries()) {
      if (id >= this.layout.size) {
        throw new MomaError('ERR_RANGE', `shard ${this.file}: document ${doc} token ${i} (byte offset ${byteOffset + i * width}) is id ${id}, outside the vocabulary [0, ${this.layout.size})`);
      }
      if (modalityOfId(this.layout, id) === 1) images++;
    }
    if (images !== this.images[doc]) throw new MomaError('ERR_FILE', `shard ${this.file}: document ${doc} (byte offset ${byteOffset}) has ${images} image tokens, its index entry says ${this.images[doc]}`);
    return ids;
  }

  /** Closes the file descriptor (reads after this throw ERR_DISPOSED). */
  close(): void {
    if (this.fd !== null) fs.closeSync(this.fd);
    this.fd = null;
  }

  private checkDoc(doc: number, op: string): number {
    if (!Number.isInteger(doc) || doc < 0 || doc >= this.documents) {
      throw new MomaError('ERR_RANGE', `ShardReader.${op} ${this.file}: document ${String(doc)} is outside [0, ${this.documents})`);
    }
    return doc;
  }

  /** A fresh (aligned) buffer with `length` bytes at `position`. */
  private readAt(position: number, length: number, what: string): Buffer {
    if (this.fd === null) throw new MomaError('ERR_DISPOSED', `shard ${this.file}: read of ${what} after close()`);
    const buf = Buffer.from(new ArrayBuffer(length));
    let done = 0;
    try {
      while (done < length) {
        const n = fs.readSync(this.fd, buf, done, length - done, position + done);
        if (n <= 0) break;
        done += n;
      }
    } catch (err) {
      throw new MomaError('ERR_FILE', `shard ${this.file}: cannot read ${what} at byte ${position} (${(err as Error).message})`);
    }
    if (done < length) throw new MomaError('ERR_FILE', `shard ${this.file}: truncated: ${what} needs bytes [${position}, ${position + length}) but only ${done} could be read`);
    return buf;
  }
}

/** Magic bytes as an error shows them: quoted when printable ASCII (a NUL as \0), else in hex. */
function magicText(bytes: Uint8Array): string {
  const text = Buffer.from(bytes).toString('latin1');
  return /^[\x20-\x7e]*\0*$/.test(text) ? `"${text.replace(/\0/g, '\\0')}"` : `bytes ${Buffer.from(bytes).toString('hex')}`;
}

function hex32(n: number): string {
  return `0x${n.toString(16).padStart(8, '0')}`;
}
