// Whole-layer benchmark through the public API: MoMaFFN (moma 4t4i, moe 8x) forward + backward
// against the dense SwiGLU FFN of equal active FLOPs (expert choice with c = 1 gives each row one
// expert-FFN on average), at the paper's 435M FFN shape (d 1024, f 4096). The three layers run
// interleaved (dense, 4t4i, 8x, dense, …) so that drifts of the machine's speed hit all alike; each
// time is the median of the repeats after one warm-up round and ends with a device
// synchronisation. The ratio is the median of the per-round ratios moe / dense.
'use strict';

function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

function disposeAll(obj) {
  for (const v of Object.values(obj)) if (v && typeof v.dispose === 'function') v.dispose();
}

async function layerResults(moma, device, T, repeats) {
  const d = 1024;
  const f = 4096;
  const dtype = device.startsWith('cuda') ? 'bfloat16' : 'float32';
  const dev = device.startsWith('cuda') ? 'cuda' : 'cpu';
  // GFLOP/s on the CPU, TFLOP/s on a GPU
  const [unit, scale] = dev === 'cpu' ? ['GFLOP/s', 1e6] : ['TFLOP/s', 1e9];
  const gen = new moma.Generator(11);
  const x = moma.randn([T, d], { device, dtype, generator: gen });
  const dy = moma.randn([T, d], { device, dtype, generator: gen, std: 1e-3 });
  const mod = new Int32Array(T);
  for (let t = 0; t < T; t++) mod[t] = (t * 2654435761) % 97 < 48 ? 0 : 1;
  const modality = moma.tensor(mod, { device });

  const dense = new moma.SwiGLUFFN({ dModel: d, dFF: f, device, dtype });
  const layers = [
    { op: 'layer.dense_swiglu.fwd_bwd', module: dense, forward: () => dense.forward(x) },
  ];
  for (const [op, groups] of [
    ['layer.moma_4t4i.fwd_bwd', [{ modality: 'text', experts: 4 }, { modality: 'image', experts: 4 }]],
    ['layer.moe_8x.fwd_bwd', [{ modality: ['text', 'image'], experts: 8 }]],
  ]) {
    const ffn = new moma.MoMaFFN({ dModel: d, dFF: f, groups, device, dtype });
    layers.push({ op, module: ffn, forward: () => ffn.forward(x, modality, { training: true }), moe: true });
  }
  const times = layers.map(() => []);
  for (let round = 0; round < repeats + 1; round++) {
    for (const [i, layer] of layers.entries()) {
      const t0 = process.hrtime.bigint();
      const { y, ctx } = layer.forward();
      const { dx, grads } = layer.module.backward(ctx, dy);
      await moma.synchronize(device);
      const ms = Number(process.hrtime.bigint() - t0) / 1e6;
      if (round > 0) times[i].push(ms);
      if (layer.moe && round === 0) {
        const offsets = await ctx.routing.expertOffsets.toArray();
        layer.rows = offsets[offsets.length - 1];
      }
      ctx.dispose();
      y.dispose();
      dx.dispose();
      disposeAll(grads);
    }
  }
  const results = layers.map((layer, i) => {
    const ms = median(times[i]);
    const flops = layer.moe ? 3 * (6 * layer.rows * d * f + 2 * T * d * 8) : 3 * 6 * T * d * f;
    const r = { device: dev, op: layer.op, shape: `T${T} d${d} f${f}${layer.moe ? ' c1' : ''}`, ms, rate: flops / ms / scale, unit };
    if (layer.moe) {
      r.ratio_vs_dense = median(times[i].map((t, k) => t / times[0][k]));
      r.note = `${layer.rows} expert rows; time ratio vs dense ${r.ratio_vs_dense.toFixed(3)} (median of ${repeats} interleaved rounds)`;
    }
    return r;
  });
  for (const layer of layers) layer.module.dispose();
  for (const t of [x, dy, modality]) t.dispose();
  return results;
}

module.exports = { layerResults };
