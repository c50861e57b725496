/**
 * Choosing the next token from one position's logits, on the host (the generation loop calls
 * this once per generated token with the last position's logits).
 *
 * The distribution follows Hugging Face / PyTorch practice, in this order:
 *   1. ids with allowed[i] = 0 and ids with logit -Infinity get probability 0;
 *   2. temperature 0 is greedy: the largest logit, ties to the smaller id;
 *   3. top-k (k > 0): keep the k largest logits, ties to the smaller id (exactly k survive);
 *   4. softmax in float64 of (logit - max) / temperature (so tiny temperatures don't overflow);
 *   5. top-p (p < 1): walking ids by decreasing probability (ties to the smaller id), keep the
 *      shortest prefix whose cumulative probability reaches p (at least one id);
 *   6. renormalise.
 * sampleToken draws from that distribution by inverse CDF over ids in increasing order with a
 * single rng.float(), greedy included, so each call advances the generator by exactly one float
 * and a seed fixes every choice.
 */
import { SeededRandom } from '../data/seeded_random';
import { MomaError } from '../errors';
import { requireOptions } from '../options';
import { at, last } from '../checked';

export interface SamplingOptions {
  /** Logit divisor; 0 is greedy. Default 1. */
  temperature?: number;
  /** Keep only the k most likely ids; 0 (default) is off. */
  topK?: number;
  /** Nucleus mass in (0, 1]; 1 (default) is off. */
  topP?: number;
}

export const DEFAULT_SAMPLING: Readonly<Required<SamplingOptions>> = { temperature: 1, topK: 0, topP: 1 };

/** Checks sampling options (errors name `op` and the option) and fills in the defaults. */
export function validateSampling(options: SamplingOptions, op: string): Required<SamplingOptions> {
  if (options === null || typeof options !== 'object' || Array.isArray(options)) {
    throw new MomaError('ERR_ARG', `${op}: sampling options must be an object, got ${String(options)}`);
  }
  const fail = (key: string, what: string, value: unknown): never => {
    throw new MomaError('ERR_ARG', `${op}: option '${key}' must be ${what}, got ${String(value)}`);
  };
  const { temperature = DEFAULT_SAMPLING.temperature, topK = DEFAULT_SAMPLING.topK, topP = DEFAULT_SAMPLING.topP } = options;
  if (typeof temperature !== 'number' || !Number.isFinite(temperature) || temperature < 0) fail('temperature', 'a finite number >= 0', temperature);
  if (typeof topK !== 'number' || !Number.isSafeInteger(topK) || topK < 0) fail('topK', 'an integer >= 0 (0 is off)', topK);
  if (typeof topP !== 'number' || !(topP > 0 && topP <= 1)) fail('topP', 'a number in (0, 1] (1 is off)', topP);
  return { temperature, topK, topP };
}

/** The ids that may be drawn: allowed and with a logit above -Infinity, in increasing order. */
/** A typed array of that kind from any realm (the native addon's arrays are not this realm's in a vm context). */
function isTyped(value: unknown, kind: 'Float32Array' | 'Uint8Array'): boolean {
  return ArrayBuffer.isView(value) && Object.prototype.toString.call(value) === `[object ${kind}]`;
}

function describe(value: unknown): string {
  return ArrayBuffer.isView(value) ? Object.prototype.toString.call(value).slice(8, -1) : typeof value;
}

function candidateIds(logits: Float32Array, allowed: Uint8Array | undefined, op: string): Int32Array {
  if (!isTyped(logits, 'Float32Array') || logits.length < 1) {
    throw new MomaError('ERR_ARG', `${op}: logits must be a non-empty Float32Array, got ${isTyped(logits, 'Float32Array') ? 'an empty one' : describe(logits)}`);
  }
  const size = logits.length;
  if (allowed !== undefined) {
    if (!isTyped(allowed, 'Uint8Array')) throw new MomaError('ERR_ARG', `${op}: allowed must be a Uint8Array, got ${describe(allowed)}`);
    if (allowed.length !== size) throw new MomaError('ERR_ARG', `${op}: allowed has length ${allowed.length}, the logits have ${size}`);
  }
  const ids = new Int32Array(size);
  let count = 0;
  let anyAllowed = false;
  for (const [id, logit] of logits.entries()) {
    if (Number.isNaN(logit) || logit === Infinity) throw new MomaError('ERR_RANGE', `${op}: logit of id ${id} is ${String(logit)}`);
    const mark = allowed === undefined ? 1 : at(allowed, id, op);
    if (mark > 1) throw new MomaError('ERR_ARG', `${op}: allowed[${id}] is ${mark}, must be 0 or 1`);
    if (mark === 0) continue;
    anyAllowed = true;
    if (logit !== -Infinity) ids[count++] = id;
  }
  if (!anyAllowed) throw new MomaError('ERR_ARG', `${op}: no id is allowed (the mask of ${size} ids is all 0)`);
  if (count === 0) throw new MomaError('ERR_RANGE', `${op}: every allowed id has logit -Infinity`);
  return ids.subarray(0, count);
}

/** Whether id a ranks before id b: larger logit, ties to the smaller id. */
function ranksBefore(logits: Float32Array, a: number, b: number): boolean {
  const la = at(logits, a, 'ranksBefore');
  const lb = at(logits, b, 'ranksBefore');
  return la > lb || (la === lb && a < b);
}

/**
 * The k best candidates (k < candidates.length) by a scan with a size-k heap whose root is the
 * worst kept id: O(V log k), and exact on ties since ids arrive in increasing order.
 */
function topKIds(logits: Float32Array, candidates: Int32Array, k: number): Int32Array {
  const heap = candidates.slice(0, k);
  const siftDown = (from: number): void => {
    for (let i = from; ;) {
      let worst = i;
      const left = 2 * i + 1;
      const idAt = (slot: number): number => at(heap, slot, 'topKIds');
      if (left < k && ranksBefore(logits, idAt(worst), idAt(left))) worst = left;
      if (left + 1 < k && ranksBefore(logits, idAt(worst), idAt(left + 1))) worst = left + 1;
      if (worst === i) return;
      [heap[i], heap[worst]] = [idAt(worst), idAt(i)];
      i = worst;
    }
  };
  for (let i = (k >> 1) - 1; i >= 0; i--) siftDown(i);
  for (const id of candidates.subarray(k)) {
    if (ranksBefore(logits, id, at(heap, 0, 'topKIds'))) {
      heap[0] = id;
      siftDown(0);
    }
  }
  return heap;
}

/**
 * The nucleus of `kept` (weights in `weights`, summing to `total`): the shortest prefix in rank
 * order whose probability reaches topP. Only ids with weight >= total·(1 - topP)/(2n) are
 * sorted: the others together hold less than (1 - topP)/2 of the mass, so the walk ends first.
 */
function nucleusIds(logits: Float32Array, kept: Int32Array, weights: Float64Array, total: number, topP: number): Int32Array {
  const floor = (total * (1 - topP)) / (2 * kept.length);
  const head = kept.filter((id) => at(weights, id, 'nucleusIds') >= floor).sort((a, b) => (a === b ? 0 : ranksBefore(logits, a, b) ? -1 : 1));
  let cumulative = 0;
  let length = 0;
  for (const id of head) {
    if (cumulative >= topP) break;
    cumulative += at(weights, id, 'nucleusIds') / total;
    length++;
  }
  return head.subarray(0, length);
}

/** The distribution (length V, float64) after masking, temperature, top-k and top-p. */
function distribution(logits: Float32Array, options: Required<SamplingOptions>, allowed: Uint8Array | undefined, op: string): Float64Array {
  const { temperature, topK, topP } = validateSampling(options, op);
  let kept = candidateIds(logits, allowed, op);
  const probabilities = new Float64Array(logits.length);
  if (temperature === 0) {
    let best = at(kept, 0, op);
    for (const id of kept.subarray(1)) if (ranksBefore(logits, id, best)) best = id;
    probabilities[best] = 1;
    return probabilities;
  }
  if (topK > 0 && topK < kept.length) kept = topKIds(logits, kept, topK);
  let max = -Infinity;
  for (const id of kept) max = Math.max(max, at(logits, id, op));
  let total = 0;
  for (const id of kept) {
    const weight = Math.exp((at(logits, id, op) - max) / temperature);
    probabilities[id] = weight;
    total += weight;
  }
  if (topP < 1) {
    const nucleus = nucleusIds(logits, kept, probabilities, total, topP);
    const lastKept = last(nucleus, op);
    for (const id of kept) if (ranksBefore(logits, lastKept, id)) probabilities[id] = 0;
    kept = nucleus;
    total = 0;
    for (const id of kept) total += at(probabilities, id, op);
  }
  for (const id of kept) probabilities[id] = at(probabilities, id, op) / total;
  return probabilities;
}

/** The final distribution sampleToken draws from (length V, float64, sums to 1). */
export function tokenProbabilities(logits: Float32Array, options: Required<SamplingOptions>, allowed?: Uint8Array): Float64Array {
  return distribution(logits, options, allowed, 'tokenProbabilities');
}

/** Where sampleToken draws from: the random stream, and optionally the ids it may pick. */
export interface SampleDraw {
  rng: SeededRandom;
  /** 1 for each id that may be drawn, 0 for the others (ModalityConstraint.allowed()); all ids when absent. */
  allowed?: Uint8Array;
}

/**
 * Draws the next id, `sampleToken(logits, sampling, { rng, allowed })`: u = rng.float(), then the
 * first id (increasing order) whose cumulative probability exceeds u · (total mass). Exactly one
 * rng.float() per call, greedy included.
 */
export function sampleToken(logits: Float32Array, options: Required<SamplingOptions>, draw: SampleDraw): number {
  const { rng, allowed } = requireOptions(draw, 'sampleToken', ['rng']);
  if (!(rng instanceof SeededRandom)) throw new MomaError('ERR_ARG', `sampleToken: rng must be a SeededRandom, got ${String(rng)}`);
  const probabilities = distribution(logits, options, allowed, 'sampleToken');
  let total = 0;
  let last = -1;
  for (const [id, p] of probabilities.entries()) {
    if (p > 0) {
      total += p;
      last = id;
    }
  }
  const threshold = rng.float() * total;
  let cumulative = 0;
  for (const [id, p] of probabilities.subarray(0, last).entries()) {
    cumulative += p;
    if (cumulative > threshold) return id;
  }
  return last;
}
