import { MomaError } from './errors';
import { NATIVE_TABLES } from './native_tables';

/** Element types; their numeric codes (the native addon's) are NATIVE_TABLES.dtype. */
export type DType = keyof typeof NATIVE_TABLES.dtype;

const CODES: Readonly<Record<DType, number>> = NATIVE_TABLES.dtype;
const NAMES: DType[] = [];
for (const [name, code] of Object.entries(CODES) as [DType, number][]) NAMES[code] = name;

export function dtypeCode(dtype: DType, op: string): number {
  const code = (CODES as Record<string, number | undefined>)[dtype];
  if (code === undefined) {
    throw new MomaError('ERR_DTYPE', `${op}: unknown dtype '${String(dtype)}' (expected ${NAMES.join(', ')})`);
  }
  return code;
}

export function dtypeName(code: number): DType {
  const name = NAMES[code];
  if (name === undefined) throw new MomaError('ERR_INTERNAL', `unknown dtype code ${code}`);
  return name;
}

export function isFloat(dtype: DType): boolean {
  return dtype === 'float32' || dtype === 'bfloat16';
}

/** The TypedArray that `toArray()` returns for each dtype (bfloat16 is widened to float32). */
export type HostArray = Float32Array | Int32Array | Uint8Array;
