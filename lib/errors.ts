/** Stable error codes carried by every MomaError. */
export type MomaErrorCode =
  | 'ERR_SHAPE'
  | 'ERR_DTYPE'
  | 'ERR_DEVICE'
  | 'ERR_DISPOSED'
  | 'ERR_RANGE'
  | 'ERR_ARG'
  | 'ERR_CUDA'
  | 'ERR_OOM'
  | 'ERR_LOAD'
  | 'ERR_FILE'
  | 'ERR_DIST'
  /** Training met a non-finite loss, gradient norm or parameter (lib/train/trainer.ts); TypeScript side only. */
  | 'ERR_NONFINITE'
  | 'ERR_INTERNAL';

/**
 * The one error type moma throws (and rejects with). `code` is stable across releases; the
 * message names the op, the argument and the shapes involved.
 */
export class MomaError extends Error {
  readonly code: MomaErrorCode;

  constructor(code: MomaErrorCode, message: string) {
    super(message);
    this.name = 'MomaError';
    this.code = code;
  }
}
