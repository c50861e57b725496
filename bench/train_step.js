// The `step` suite: full training steps through the Trainer (batch upload, forward, backward,
// gradient-norm clipping, AdamW, loss read-back), repeated on one fixed batch of the built-in
// captioned-shapes data (8 × 256 tokens packed from documents, about half image tokens;
// MOMA_BENCH_STEP_BATCH / MOMA_BENCH_STEP_SEQ change it), for:
//   tiny-dense, tiny-4t4i, tiny-4t4i-mod   the tiny presets (d 128, 3 or 4 layers)
//   d512-dense, d512-4t4i                  d 512, 4 layers, 8 heads, f 1368 (the 90M tier's width)
// all with the data's vocabulary (517 ids); MOMA_BENCH_STEP_MODELS=name,name picks some.
// FLOPs per step are the trainer's own count (lib/train/flops.ts: 3 × forward, SPEC §6). The
// models run interleaved, one step each per round, after a warm-up round; times are medians.
// On a GPU the models compute in bfloat16 (float32 parameters and optimizer).
'use strict';
const { envInt, flopUnit, deviceKind, interleavedRounds, isCuda, median, medianRatio, withCeiling } = require('./common');

const D512 = { dModel: 512, layers: 4, heads: 8, ffn: { dFF: 1368 } };
const MODELS = [
  { name: 'tiny-dense', preset: 'tiny-dense', overrides: {} },
  { name: 'tiny-4t4i', preset: 'tiny-4t4i', overrides: {} },
  { name: 'tiny-4t4i-mod', preset: 'tiny-4t4i-mod', overrides: {} },
  { name: 'd512-dense', preset: 'tiny-dense', overrides: D512 },
  { name: 'd512-4t4i', preset: 'tiny-4t4i', overrides: D512 },
];

function selectedModels() {
  const names = (process.env.MOMA_BENCH_STEP_MODELS || '').split(',').map((s) => s.trim()).filter(Boolean);
  const unknown = names.filter((n) => !MODELS.some((m) => m.name === n));
  if (unknown.length) throw new Error(`MOMA_BENCH_STEP_MODELS: unknown model(s) ${unknown.join(', ')}; known: ${MODELS.map((m) => m.name).join(', ')}`);
  return names.length ? MODELS.filter((m) => names.includes(m.name)) : MODELS;
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
  const runs = selectedModels().map((m) => {
    const config = moma.preset(m.preset, {
      ...m.overrides, vocabSize: layout.size, device, seed: 1, computeDtype: isCuda(device) ? 'bfloat16' : 'float32',
    });
    const model = new moma.Transformer(config);
    const trainer = new moma.Trainer({ model, data: source, vocab: layout, steps: 1 << 30, schedule: { peak: 3e-3, warmup: 0 } });
    return { ...m, config: model.config, model, trainer, losses: [] };
  });
  const variants = runs.map((r) => ({ run: async () => r.losses.push((await r.trainer.trainStep()).loss) }));
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
    const base = `${r.name.split('-')[0]}-dense`;
    const dense = runs.findIndex((other) => other.name === base);
    if (dense >= 0 && dense !== i) {
      row.ratio_vs_dense = medianRatio(times[i], times[dense]);
      row.note += `; time vs ${base} ${row.ratio_vs_dense.toFixed(3)}`;
    }
    return row;
  });
  const opt = runs[0]?.trainer.optimizer.options;
  const job = {
    kind: 'step', repeats, image_share: imageShare,
    batch: { tokens: host.tokens, targets: host.targets, positions: host.positions, seg_start: host.segStart, modality: host.modality, seq_len: host.seqLen },
    optimizer: opt && { lr: 3e-3, betas: opt.betas, eps: opt.eps, weight_decay: opt.weightDecay, clip_norm: opt.clipNorm },
    variants: runs.map((r, i) => ({
      op: rows[i].op, shape: rows[i].shape, config: r.config, flops: rows[i].flops,
      dense: rows[i].ratio_vs_dense === undefined ? null : runs.findIndex((other) => other.name === `${r.name.split('-')[0]}-dense`),
    })),
  };
  for (const r of runs) {
    r.trainer.dispose();
    r.model.dispose();
  }
  return { rows, jobs: isCuda(device) ? [] : [job] };
}

module.exports = { stepSuite };
