// The `step` suite: full training steps through the Trainer (batch upload, forward, backward,
// gradient-norm clipping, AdamW, loss read-back), repeated on one fixed batch of the built-in
// captioned-shapes data (8 × 256 tokens packed from documents, about half image tokens;
// MOMA_BENCH_STEP_BATCH / MOMA_BENCH_STEP_SEQ change it), for:
//   tiny-dense, tiny-4t4i, tiny-4t4i-mod   the tiny presets (d 128, 3 or 4 layers)
//   d512-dense, d512-4t4i                  d 512, 4 layers, 8 heads, f 1368 (the 90M tier's width)
//   tiny-4t4i-bf16, d512-dense-bf16, d512-4t4i-bf16
//                                          the same in bfloat16 (CPU only: float32 parameters,
//                                          gradients and AdamW, bf16 activations and GEMMs)
// all with the data's vocabulary (517 ids); MOMA_BENCH_STEP_MODELS=name,name picks some.
// MOMA_CPU_GEMM=avx512 times the bf16 models on the widening float32 GEMM instead of the bf16 one.
// Each MoE row's ratio is against the dense model of its width and dtype.
// FLOPs per step are the trainer's own count (lib/train/flops.ts: 3 × forward, SPEC §6). The
// models run interleaved, one step each per round, after a warm-up round; times are medians.
// On a GPU the models compute in bfloat16 (float32 parameters and optimizer) and the -bf16 rows
// are left out. The PyTorch reference (bench/reference/run.py) runs the float32 models only.
'use strict';
const { envInt, flopUnit, deviceKind, interleavedRounds, isCuda, median, medianRatio, withCeiling } = require('./common');

const D512 = { dModel: 512, layers: 4, heads: 8, ffn: { dFF: 1368 } };
const MODELS = [
  { name: 'tiny-dense', preset: 'tiny-dense', overrides: {}, dtype: 'float32' },
  { name: 'tiny-4t4i', preset: 'tiny-4t4i', overrides: {}, dtype: 'float32' },
  { name: 'tiny-4t4i-mod', preset: 'tiny-4t4i-mod', overrides: {}, dtype: 'float32' },
  { name: 'd512-dense', preset: 'tiny-dense', overrides: D512, dtype: 'float32' },
  { name: 'd512-4t4i', preset: 'tiny-4t4i', overrides: D512, dtype: 'float32' },
  { name: 'tiny-4t4i-bf16', preset: 'tiny-4t4i', overrides: {}, dtype: 'bfloat16' },
  { name: 'd512-dense-bf16', preset: 'tiny-dense', overrides: D512, dtype: 'bfloat16' },
  { name: 'd512-4t4i-bf16', preset: 'tiny-4t4i', overrides: D512, dtype: 'bfloat16' },
];

/** The dense model a row's time is compared with: same width and dtype. */
function denseOf(runs, r) {
  return runs.findIndex((other) => other !== r && other.preset === 'tiny-dense' && other.dtype === r.dtype && other.name.split('-')[0] === r.name.split('-')[0]);
}

function selectedModels(device) {
  const names = (process.env.MOMA_BENCH_STEP_MODELS || '').split(',').map((s) => s.trim()).filter(Boolean);
  const unknown = names.filter((n) => !MODELS.some((m) => m.name === n));
  if (unknown.length) throw new Error(`MOMA_BENCH_STEP_MODELS: unknown model(s) ${unknown.join(', ')}; known: ${MODELS.map((m) => m.name).join(', ')}`);
  const models = names.length ? MODELS.filter((m) => names.includes(m.name)) : MODELS;
  return isCuda(device) ? models.filter((m) => m.dtype === 'float32') : models;
}

/** One fixed batch of the built-in data: { layout, sequences }. */
async function fixedBatch(moma, batchSize, seqLen) {
  const dataset = await moma.builtinDataset({ seed: 0 });
  const packer = new moma.SequencePacker(dataset.store('train', 0), {
    batchSize, seqLen, isImage: (id) => moma.modalityOfId(dataset.layout, id) === 1, imageFraction: 0.5,
  });
  return { layout: dataset.layout, sequences: packer.next() };
}

/** The batch as run.py takes it (host arrays of what the Trainer builds). */
async function hostBatch(moma, layout, sequences) {
  const vocab = moma.vocabFromSpec(layout);
  const batch = moma.makeBatch(sequences, { padId: vocab.padId, bosId: vocab.bosId, modalityOf: vocab.modalityOf, modalities: 2, vocabSize: layout.size });
  const [tokens, targets, positions] = await Promise.all([batch.tokens.toArray(), batch.targets.toArray(), batch.positions.toArray()]);
  const out = {
    tokens: Array.from(tokens), targets: Array.from(targets), positions: Array.from(positions),
    segStart: Array.from(batch.host.segStart), modality: Array.from(batch.host.modality), seqLen: sequences[0].length,
    rows: batch.counts.rows, host: batch.host,
  };
  moma.disposeBatch(batch);
  return out;
}

/** The step suite on one device: rows and the PyTorch job (CPU only). */
async function stepSuite(moma, device, results) {
  const repeats = envInt('MOMA_BENCH_REPEATS', 5);
  const B = envInt('MOMA_BENCH_STEP_BATCH', 8);
  const S = envInt('MOMA_BENCH_STEP_SEQ', 256);
  const [unit, scale] = flopUnit(device);
  const { layout, sequences } = await fixedBatch(moma, B, S);
  const host = await hostBatch(moma, layout, sequences);
  const source = { next: () => sequences, state: () => 0, restore: () => {} };
  const runs = selectedModels(device).map((m) => {
    const config = moma.preset(m.preset, {
      ...m.overrides, vocabSize: layout.size, device, seed: 1, computeDtype: isCuda(device) ? 'bfloat16' : m.dtype,
    });
    const model = new moma.Transformer(config);
    const trainer = new moma.Trainer({ model, data: source, vocab: layout, steps: 1 << 30, schedule: { peak: 3e-3, warmup: 0 } });
    return { ...m, config: model.config, model, trainer, losses: [] };
  });
  // log: true reads each step's loss back (the timing waits for the device anyway)
  const variants = runs.map((r) => ({ run: async () => r.losses.push((await r.trainer.trainStep({ log: true })).loss) }));
  const times = await interleavedRounds(moma, device, variants, repeats);
  const imageShare = host.modality.filter((m) => m === 1).length / host.rows;
  const rows = runs.map((r, i) => {
    const ms = median(times[i]);
    const flops = moma.trainingFlops(r.config, host.host).total;
    const c = r.config;
    const shape = `B${B} S${S} d${c.dModel} L${c.layers} f${c.ffn.dFF} V${c.vocabSize}`;
    const row = withCeiling({ device: deviceKind(device), op: `step.${r.name}`, shape, ms, rate: flops / ms / scale, unit, flops }, results);
    row.tokens_per_s = (host.rows / ms) * 1000;
    row.note = `${Math.round(row.tokens_per_s)} tokens/s; loss ${r.losses[0].toFixed(3)} -> ${r.losses[r.losses.length - 1].toFixed(3)} over ${r.losses.length} steps`;
    const dense = denseOf(runs, r);
    if (dense >= 0) {
      row.ratio_vs_dense = medianRatio(times[i], times[dense]);
      row.note += `; time vs ${runs[dense].name} ${row.ratio_vs_dense.toFixed(3)}`;
    }
    return row;
  });
  const opt = runs[0]?.trainer.optimizer.options;
  const torchRuns = runs.filter((r) => r.dtype === 'float32');
  const job = {
    kind: 'step', repeats, image_share: imageShare,
    batch: { tokens: host.tokens, targets: host.targets, positions: host.positions, seg_start: host.segStart, modality: host.modality, seq_len: host.seqLen },
    optimizer: opt && { lr: 3e-3, betas: opt.betas, eps: opt.eps, weight_decay: opt.weightDecay, clip_norm: opt.clipNorm },
    variants: torchRuns.map((r) => {
      const row = rows[runs.indexOf(r)];
      const dense = denseOf(torchRuns, r);
      return { op: row.op, shape: row.shape, config: r.config, flops: row.flops, dense: dense >= 0 ? dense : null };
    }),
  };
  for (const r of runs) {
    r.trainer.dispose();
    r.model.dispose();
  }
  return { rows, jobs: isCuda(device) ? [] : [job] };
}

module.exports = { stepSuite };
