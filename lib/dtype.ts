import { MomaError } from './errors';

/** Element types, with the numeric codes the native addon uses. */
export type DType = 'float32' | 'bfloat16' | 'int32' | 'uint8';

const CODES: Record<DType, number> = { float32: 0, bfloat16: 1, int32: 2, uint8: 3 };
const NAMES: DType[] = ['float32', 'bfloat16', 'int32', 'uint8'];

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
