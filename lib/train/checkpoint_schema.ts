/**
 * The schemas of every JSON file a checkpoint or a run folder holds for moma itself, and the one
 * way they are checked (parseWithSchema): a value that does not fit fails as
 * MomaError('ERR_FILE') `<op>: <file>: <key path> must be <what was expected>, got <what it is>`,
 * where "what it is" comes from describeValue (a type, a number, a short plain word), never the
 * file's text. The files:
 *   trainer.json           TrainerState: step, optimizer step, tokens, FLOPs, generator, data
 *                          position (a Trainer's resume needs all of them: trainerResumeSchema)
 *   optimizer.index.json   OptimizerIndex of a sharded checkpoint (lib/train/checkpoint.ts)
 *   optimizer shard metadata  the __metadata__ of optimizer.rank-…-of-….safetensors
 *   checksums.json         SHA-256 of every other file of the checkpoint folder
 *   run.json               RunFile (lib/run/records.ts), its environment RunEnvironment (lib/run/environment.ts)
 * config.json is a Transformer config, checked by validateConfig (lib/model/transformer.ts).
 */
import { z } from 'zod';
import { describeKey, describeValue } from '../checked';
import { MomaError } from '../errors';
import { readJson } from '../io/files';

const count = z.number().int().min(0);
const finiteNonNegative = z.number().min(0).refine(Number.isFinite, { message: 'a finite number >= 0' });
const decimalString = z.string().regex(/^[0-9]{1,20}$/, { message: 'a decimal integer string' });
const sha256Hex = z.string().regex(/^[0-9a-f]{64}$/, { message: 'a lower-case hex SHA-256' });
// a file name inside the folder: no folder part, no control characters
// eslint-disable-next-line no-control-regex
const plainFileName = z.string().regex(/^(?!\.{1,2}$)[^/\\\u0000-\u001f\u007f]{1,255}$/, { message: 'a file name inside the folder' });

/** trainer.json as any checkpoint has it: step and optimizer step, the rest checked when present (callers may add keys). */
export const trainerStateSchema = z.looseObject({
  step: count,
  optimizerStep: count,
  tokens: finiteNonNegative.optional(),
  flops: z.strictObject({ total: finiteNonNegative, perModality: z.array(finiteNonNegative) }).optional(),
  generator: z.strictObject({ seed: decimalString, offset: decimalString }).optional(),
  dataPosition: z.unknown().optional(),
});

/** trainer.json of a checkpoint a Trainer wrote and resumes from: everything it restores must be there. */
export const trainerResumeSchema = trainerStateSchema.extend({
  tokens: finiteNonNegative,
  flops: z.strictObject({ total: finiteNonNegative, perModality: z.array(finiteNonNegative) }),
  generator: z.strictObject({ seed: decimalString, offset: decimalString }),
  dataPosition: z.unknown().refine((v) => v !== undefined, { message: 'the data position saved by the trainer' }),
});

const flatEntrySchema = z.strictObject({ name: z.string().min(1), shape: z.array(count), offset: count, numel: count });

/** optimizer.index.json. */
export const optimizerIndexSchema = z.strictObject({
  format: z.literal('moma-optimizer-shards'),
  version: z.literal(1),
  sharding: z.enum(['zero1', 'zero2', 'zero3']),
  step: count,
  numel: count,
  ranks: z.number().int().min(1),
  shardSize: count,
  parameters: z.array(flatEntrySchema),
  shards: z.array(z.strictObject({ rank: count, file: plainFileName, from: count, to: count })),
});

/** The __metadata__ of an optimizer shard file (all values are strings in safetensors). */
export const optimizerShardMetadataSchema = z.looseObject({
  format: z.literal('moma-optimizer-shard'),
  rank: decimalString,
  ranks: decimalString,
  from: decimalString,
  to: decimalString,
  step: decimalString,
});

export const CHECKSUMS_FORMAT = 'moma-checksums';

/** checksums.json: the SHA-256 of every other file in the checkpoint folder, by file name. */
export const checksumsSchema = z.strictObject({
  format: z.literal(CHECKSUMS_FORMAT),
  version: z.literal(1),
  algorithm: z.literal('sha256'),
  files: z.record(plainFileName, sha256Hex),
});

export type Checksums = z.infer<typeof checksumsSchema>;

/** run.json's environment (lib/run/environment.ts): where a run started or resumed; keys added later are let through. */
export const runEnvironmentSchema = z.looseObject({
  host: z.string(),
  os: z.string(),
  cpu: z.looseObject({ model: z.string(), cores: count, threads: count }),
  gpus: z.array(z.looseObject({ index: count, name: z.string() })),
  cuda: z.looseObject({ driver: z.union([z.string(), z.null()]), runtime: z.union([z.string(), z.null()]) }),
  node: z.string(),
  moma: z.string(),
  binary: z.looseObject({ kind: z.string(), backends: z.array(z.string()), path: z.string() }),
  git: z.union([z.null(), z.looseObject({ sha: z.string(), dirty: z.boolean(), root: z.string() })]),
  command: z.array(z.string()),
});

/** run.json: the keys the report, the experiments and a resume read, with their types (the settings are checked again by run_config on resume). */
export const runFileSchema = z.looseObject({
  format: z.literal('moma-run'),
  version: z.literal(1),
  moma: z.string(),
  startedAt: z.string(),
  config: z.looseObject({
    preset: z.string().optional(), data: z.string().optional(), device: z.string().optional(),
    steps: count.optional(), batchSize: count.optional(), seqLen: count.optional(), lr: finiteNonNegative.optional(),
    warmup: count.optional(), seed: z.number().int().optional(), imageFraction: z.union([finiteNonNegative, z.null(), z.string()]).optional(),
    evalEvery: count.optional(), evalBatches: count.optional(), checkpointEvery: count.optional(), logEvery: count.optional(),
    gradAccum: count.optional(), sharding: z.enum(['none', 'zero1', 'zero2', 'zero3']).optional(), expertParallel: z.number().int().min(1).optional(), out: z.string().optional(),
    checkpointMinutes: finiteNonNegative.optional(), tensorboard: z.boolean().optional(),
  }),
  model: z.looseObject({ vocabSize: count, dModel: count, layers: count, heads: count, ffn: z.looseObject({ kind: z.enum(['dense', 'moe']) }) }),
  parameters: z.strictObject({ total: count, active: count }),
  dataset: z.looseObject({ name: z.string(), vocabHash: z.string(), vocabSize: count, files: z.array(z.string()) }),
  optimizer: z.looseObject({
    kind: z.literal('adamw'), betas: z.tuple([z.number(), z.number()]), eps: z.number(), weightDecay: z.number(), clipNorm: z.number(),
    schedule: z.looseObject({ shape: z.literal('cosine'), peak: z.number(), warmup: count, total: count, floor: z.number() }),
  }),
  environment: runEnvironmentSchema.optional(),
  resumes: z.array(z.strictObject({ step: count, at: z.string(), steps: count, environment: runEnvironmentSchema.optional() })),
  parallel: z.strictObject({ worldSize: z.number().int().min(1), gradAccum: z.number().int().min(1), globalBatch: z.number().int().min(1) }).optional(),
});

/** A key path as `flops.perModality[1]`; keys that are not plain names are described, not quoted. */
function keyPath(keys: readonly PropertyKey[]): string {
  let out = '';
  for (const key of keys) {
    if (typeof key === 'number') out += `[${key}]`;
    else {
      const shown = describeKey(String(key));
      out += shown.startsWith("'") ? `${out === '' ? '' : '.'}${String(key)}` : `${out === '' ? '' : '.'}<${shown}>`;
    }
  }
  return out === '' ? 'the file' : `'${out}'`;
}

function valueAt(root: unknown, keys: readonly PropertyKey[]): unknown {
  let value = root;
  for (const key of keys) {
    if (value === null || typeof value !== 'object') return undefined;
    value = (value as Record<PropertyKey, unknown>)[key];
  }
  return value;
}

const TYPE_NAMES: Record<string, string> = {
  number: 'a number', int: 'an integer', string: 'a string', object: 'an object', array: 'an array', boolean: 'true or false', null: 'null',
};

/** What `issue` expected, in words (never the value it got). */
function expectation(issue: z.core.$ZodIssue): string {
  switch (issue.code) {
    case 'invalid_type': return TYPE_NAMES[issue.expected] ?? issue.expected;
    case 'too_small': return issue.origin === 'array' ? `at least ${String(issue.minimum)} elements` : `>= ${String(issue.minimum)}`;
    case 'too_big': return issue.origin === 'array' ? `at most ${String(issue.maximum)} elements` : `<= ${String(issue.maximum)}`;
    case 'invalid_value': return issue.values.length === 1 ? JSON.stringify(issue.values[0]) : `one of ${issue.values.map((v) => JSON.stringify(v)).join(', ')}`;
    case 'invalid_union': return 'one of the allowed forms';
    default: return issue.message;
  }
}

/**
 * `value` (read from `file`) checked with `schema`: the parsed value, or ERR_FILE
 * `<op>: <file>: <key path> must be <expected>, got <describeValue>` for the first problem (an
 * unknown key: `<op>: <file>: unknown key 'x' in <path>`).
 */
export function parseWithSchema<T>(schema: z.ZodType<T>, value: unknown, file: string, op: string): T {
  const parsed = schema.safeParse(value);
  if (parsed.success) return parsed.data;
  const issue = parsed.error.issues[0]!;
  if (issue.code === 'unrecognized_keys') {
    const key = issue.keys[0] ?? '';
    throw new MomaError('ERR_FILE', `${op}: ${file}: unknown key ${describeKey(key)} in ${keyPath(issue.path)}`);
  }
  const got = valueAt(value, issue.path);
  const what = got === undefined ? 'is missing' : `must be ${expectation(issue)}, got ${describeValue(got)}`;
  throw new MomaError('ERR_FILE', `${op}: ${file}: ${keyPath(issue.path)} ${got === undefined ? `${what} (expected ${expectation(issue)})` : what}`);
}

/** readJson + parseWithSchema. */
export function readJsonWithSchema<T>(schema: z.ZodType<T>, file: string, op: string): T {
  return parseWithSchema(schema, readJson(file, op), file, op);
}
