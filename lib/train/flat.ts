/**
 * The flat parameter space of ZeRO (lib/train/zero.ts) and of its FSDP units (lib/train/fsdp.ts):
 * named float32 parameters, each flattened (row-major), laid end to end as one vector of N
 * elements, split over R ranks into contiguous ranges of S = ceil(N / R) elements (the space padded
 * with zeros to R·S); rank r owns [r·S, min((r + 1)·S, N)).
 */
import { zeros } from '../creation';
import { MomaError } from '../errors';
import { concat } from '../ops';
import { Tensor } from '../tensor';

/** One parameter in the flat space: its elements are [offset, offset + numel). */
export interface FlatEntry {
  name: string;
  shape: number[];
  offset: number;
  numel: number;
}

/** The flat parameter space split over `ranks`: rank r owns [r·shardSize, min((r + 1)·shardSize, numel)). */
export interface FlatLayout {
  entries: FlatEntry[];
  numel: number;
  ranks: number;
  shardSize: number;
}

/** The flat layout of named parameters (in their order) over `ranks` ranks. */
export function flatLayout(parameters: Map<string, { shape: readonly number[]; numel: number }>, ranks: number): FlatLayout {
  if (!Number.isInteger(ranks) || ranks < 1) throw new MomaError('ERR_ARG', `flatLayout: ranks must be an integer >= 1, got ${String(ranks)}`);
  const entries: FlatEntry[] = [];
  let offset = 0;
  for (const [name, p] of parameters) {
    entries.push({ name, shape: [...p.shape], offset, numel: p.numel });
    offset += p.numel;
  }
  return { entries, numel: offset, ranks, shardSize: Math.ceil(offset / ranks) };
}

/** The range [from, to) of the flat space that `rank` owns. */
export function shardRange(layout: FlatLayout, rank: number): { from: number; to: number } {
  const from = Math.min(rank * layout.shardSize, layout.numel);
  return { from, to: Math.min(from + layout.shardSize, layout.numel) };
}

/** The parts of [from, to) that fall in each parameter: entry, and the range inside the parameter. */
export function piecesOf(layout: FlatLayout, from: number, to: number): { entry: FlatEntry; begin: number; end: number }[] {
  const out: { entry: FlatEntry; begin: number; end: number }[] = [];
  for (const entry of layout.entries) {
    const begin = Math.max(from, entry.offset);
    const end = Math.min(to, entry.offset + entry.numel);
    if (begin < end) out.push({ entry, begin: begin - entry.offset, end: end - entry.offset });
  }
  return out;
}

/**
 * Elements [from, to) of the flat concatenation of `tensors` (one per layout entry, float32; null:
 * zeros), followed by zeros up to `length` elements (the padding past the end of the space).
 */
export function flatSlice(layout: FlatLayout, tensors: (Tensor | null)[], from: number, to: number, length: number, device: string): Tensor {
  const parts: Tensor[] = [];
  for (const { entry, begin, end } of piecesOf(layout, from, to)) {
    const t = tensors[layout.entries.indexOf(entry)] ?? null;
    parts.push(t === null ? zeros([end - begin], { device }) : t.reshape([entry.numel]).slice(0, begin, end));
  }
  const filled = Math.max(0, Math.min(to, layout.numel) - from);
  if (length > filled) parts.push(zeros([length - filled], { device }));
  return parts.length === 1 ? parts[0]! : concat(parts, 0);
}
