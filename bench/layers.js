// The `layers` suite: whole layers forward + backward through the public API.
//
// FFN layers at the paper's 435M FFN shape (d 1024, f 4096): the dense SwiGLU FFN against the MoE
// FFN as moma 4t4i and moe 8x at equal active FLOPs (expert choice with c = 1 gives each row one
// expert-FFN on average). Row count T from MOMA_BENCH_T (default 8192; 8192 and 32768 on a GPU).
// Both are the modules a decoder trains (SwiGLUFFN and MoEFeedForward, float32 parameters, the
// input cast to the compute dtype, forward and backward through the autograd tape), so the
// "time vs dense" ratio is the one a training step sees.
//
// Mixture-of-depths: one decoder block (QK-norm attention over sequences of 1024, 16 heads, the
// 4t4i FFN) run as a plain DecoderBlock and wrapped in a MoDBlock at c_d 0.25 (the same weights).
// A MoD block computes on a quarter of the rows, so its ideal time is about 0.25 of the plain
// block's: the row's "time vs full" against its "FLOPs vs full" shows what the MoD router,
// row selection, gather/scatter and the shorter attention segments cost. FLOPs follow SPEC §6
// through lib/train/flops.ts (3 × forward; a MoD block's attention spans scale with c_d).
//
// Variants run interleaved (a, b, c, a, b, c, …) after one warm-up round; each time is the median
// over rounds and ratios are medians of per-round ratios. Each suite also returns the job that
// bench/reference/run.py times with PyTorch (same shapes, same modality pattern).
'use strict';
const { envInt, flopUnit, deviceKind, interleavedRounds, isCuda, median, medianRatio, withCeiling } = require('./common');

const GROUPS_4T4I = [{ modality: 'text', experts: 4 }, { modality: 'image', experts: 4 }];
const GROUPS_8X = [{ modality: ['text', 'image'], experts: 8 }];
const MODALITIES = ['text', 'image'];

/** Modality of row t: half text, half image, scattered (the same pattern in run.py). */
function modalityPattern(T) {
  const mod = new Int32Array(T);
  for (let t = 0; t < T; t++) mod[t] = (t * 2654435761) % 97 < 48 ? 0 : 1;
  return mod;
}

/** Groups as run.py takes them: [[modality ids], experts]. */
function torchGroups(groups) {
  return groups.map((g) => [(Array.isArray(g.modality) ? g.modality : [g.modality]).map((m) => MODALITIES.indexOf(m)), g.experts]);
}

function rowCounts(device) {
  if (process.env.MOMA_BENCH_T) return [envInt('MOMA_BENCH_T', 8192)];
  return isCuda(device) ? [8192, 32768] : [8192];
}

async function ffnLayers(moma, device, T, repeats, results) {
  const d = 1024;
  const f = 4096;
  const dtype = isCuda(device) ? 'bfloat16' : 'float32';
  const [unit, scale] = flopUnit(device);
  const gen = new moma.Generator(11);
  // a float32 leaf cast to the compute dtype, as the Transformer feeds its FFNs (dx included)
  const x = moma.randn([T, d], { device, generator: gen });
  x.requiresGrad = true;
  const dy = moma.randn([T, d], { device, dtype, generator: gen, std: 1e-3 });
  const modalityHost = modalityPattern(T);
  const modality = moma.tensor(modalityHost, { device });

  const dense = new moma.SwiGLUFFN(d, f, { device, generator: gen, std: 0.02 });
  const layers = [{ op: 'layer.dense_swiglu.fwd_bwd', module: dense, forward: (xc) => dense.forward(xc), groups: null }];
  for (const [op, groups] of [['layer.moma_4t4i.fwd_bwd', GROUPS_4T4I], ['layer.moe_8x.fwd_bwd', GROUPS_8X]]) {
    const ffn = new moma.MoEFeedForward({ dModel: d, dFF: f, groups, device, seed: 3 });
    layers.push({ op, module: ffn, forward: (xc) => ffn.forward(xc, modality, { training: true }), groups });
  }
  const variants = layers.map((layer) => {
    const params = layer.module.parameters();
    return {
      run: async (round) => {
        // the warm-up round counts the expert rows (routing statistics, not timed)
        if (layer.groups) layer.module.collectStats = round === 0;
        moma.tidy(() => moma.backward(layer.forward(moma.F.cast(x, dtype)), dy));
        moma.zeroGrad([...params, x]);
        if (layer.groups && round === 0) {
          const stats = await layer.module.lastStats.expertStats.toArray();
          layer.rows = stats.reduce((sum, v, i) => (i % 2 === 0 ? sum + v : sum), 0);
        }
      },
    };
  });
  const times = await interleavedRounds(moma, device, variants, repeats);
  const rows = layers.map((layer, i) => {
    const ms = median(times[i]);
    const flops = layer.groups ? 3 * (6 * layer.rows * d * f + 2 * T * d * 8) : 3 * 6 * T * d * f;
    const shape = `T${T} d${d} f${f}${layer.groups ? ' c1' : ''}`;
    const row = withCeiling({ device: deviceKind(device), op: layer.op, shape, ms, rate: flops / ms / scale, unit, flops }, results);
    if (layer.groups) {
      row.ratio_vs_dense = medianRatio(times[i], times[0]);
      row.note = `${layer.rows} expert rows; time vs dense ${row.ratio_vs_dense.toFixed(3)} (median of ${repeats} interleaved rounds)`;
    }
    return row;
  });
  for (const layer of layers) layer.module.dispose();
  for (const t of [x, dy, modality]) t.dispose();
  const job = {
    kind: 'ffn', T, d, f, repeats, modality: Array.from(modalityHost),
    variants: layers.map((layer, i) => ({ op: layer.op, shape: rows[i].shape, groups: layer.groups && torchGroups(layer.groups), flops: rows[i].flops })),
  };
  return { rows, job };
}

async function modBlocks(moma, device, T, repeats, results) {
  const d = 1024;
  const heads = 16;
  const f = 4096;
  const capacity = 0.25;
  const S = Math.min(1024, T);
  const dtype = isCuda(device) ? 'bfloat16' : 'float32';
  const [unit, scale] = flopUnit(device);
  const gen = new moma.Generator(13);
  const init = { device, generator: gen, std: 0.02 };
  const ffn = new moma.MoEFeedForward({ dModel: d, dFF: f, groups: GROUPS_4T4I, device, seed: 3 });
  const block = new moma.DecoderBlock({ dModel: d, heads, ffn, norm: 'swin', ropeTheta: 10000 }, init);
  const modBlock = new moma.MoDBlock(block, { dModel: d, capacity }, init);
  // a float32 leaf cast to the compute dtype, as the Transformer feeds its blocks (dx included)
  const x = moma.randn([T, d], { device, generator: gen });
  x.requiresGrad = true;
  const dy = moma.randn([T, d], { device, dtype, generator: gen, std: 1e-3 });
  const modalityHost = modalityPattern(T);
  const segHost = Int32Array.from({ length: T }, (_, t) => t - (t % S));
  const ctx = {
    positions: moma.tensor(Int32Array.from({ length: T }, (_, t) => t % S), { device }),
    segStart: moma.tensor(segHost, { device }), modality: moma.tensor(modalityHost, { device }),
    training: true, validRows: T,
  };
  const params = modBlock.parameters();
  const step = (module) => async () => {
    moma.tidy(() => moma.backward(module.forward(moma.F.cast(x, dtype), ctx), dy));
    moma.zeroGrad([...params, x]);
  };
  const times = await interleavedRounds(moma, device, [{ run: step(block) }, { run: step(modBlock) }], repeats);
  const config = (mod) => ({
    vocabSize: 1, dModel: d, layers: 1, heads, modalities: MODALITIES, mod,
    ffn: { kind: 'moe', dFF: f, groups: GROUPS_4T4I, capacityFactor: 1 },
  });
  // trainingFlops of a one-layer model with a 1-id vocabulary, less its LM head (3 × 2·d per row)
  const blockFlops = (mod) => moma.trainingFlops(config(mod), { modality: modalityHost, segStart: segHost }).total - 3 * 2 * d * T;
  const shape = `T${T} S${S} d${d} h${heads} f${f} 4t4i`;
  const specs = [
    { op: 'block.4t4i.fwd_bwd', shape, flops: blockFlops(null) },
    { op: 'block.4t4i_mod.fwd_bwd', shape: `${shape} cd${capacity}`, flops: blockFlops({ interval: 1, capacity }) },
  ];
  const rows = specs.map((s, i) => {
    const ms = median(times[i]);
    return withCeiling({ device: deviceKind(device), op: s.op, shape: s.shape, ms, rate: s.flops / ms / scale, unit, flops: s.flops }, results);
  });
  const modRow = rows[1];
  modRow.ratio_vs_full = medianRatio(times[1], times[0]);
  modRow.flops_vs_full = specs[1].flops / specs[0].flops;
  modRow.note = `MoD block (c_d ${capacity}) vs the same block on every row: time ${modRow.ratio_vs_full.toFixed(3)}, FLOPs ${modRow.flops_vs_full.toFixed(3)}`;
  modBlock.dispose();
  for (const t of [x, dy, ctx.positions, ctx.segStart, ctx.modality]) t.dispose();
  const job = {
    kind: 'block', T, S, d, heads, f, capacity, groups: torchGroups(GROUPS_4T4I), repeats, modality: Array.from(modalityHost),
    variants: specs.map((s, i) => ({ op: s.op, shape: s.shape, mod: i === 1, flops: s.flops })),
  };
  return { rows, job };
}

/** The layers suite on one device: rows, notes and the PyTorch jobs (CPU only). */
async function layerSuite(moma, device, results) {
  const repeats = envInt('MOMA_BENCH_REPEATS', 5);
  const rows = [];
  const jobs = [];
  for (const T of rowCounts(device)) {
    for (const part of [await ffnLayers(moma, device, T, repeats, results), await modBlocks(moma, device, T, repeats, results)]) {
      rows.push(...part.rows);
      jobs.push(part.job);
    }
  }
  return { rows, jobs: isCuda(device) ? [] : jobs };
}

module.exports = { layerSuite, modalityPattern, GROUPS_4T4I };
