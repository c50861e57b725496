// Where the MoE layer's time goes (part of the `layers` suite): the forward + backward of the
// dense FFN (SwiGLUFFN) and of the MoE FFN (MoEFeedForward: 4t4i, 8x), the modules a decoder
// trains, replayed op by op through the public ops exactly as SwiGLUFFN's Linear layers with the
// autograd matmul, and lib/moe/moma_ffn.ts, compose them, with a device synchronisation after
// every op so that each op's time can be attributed to one category:
//   routing   partition, router logits, scores, expert-choice selection, router backward
//   dispatch  gathering rows into expert order (x forward, dy backward)
//   GEMM      expert (or dense) matmuls: forward (the expert W1/W3 GEMM with the SwiGLU in its
//             epilogue), input gradient, weight gradient
//   SwiGLU    the activation forward (dense) and backward
//   combine   weighted scatter back to rows (y, dx) and the gate gradient
//   add       summing the two input-gradient halves
// Each op also carries a label, and its time is kept per label as well (`ops` in the result:
// e.g. the router's three skinny GEMMs, the selection, the gate gradient), so a category's time
// can be traced to the op that spends it.
// The weights are cast to the compute dtype once, outside the clock. The per-op synchronisations
// cost a little against the layer timed whole (the table shows both). The replay's forward
// output is checked against the module's once (max abs difference).
'use strict';
const { median } = require('./common');

const CATEGORIES = ['routing', 'dispatch', 'GEMM', 'SwiGLU', 'combine', 'add'];

class OpClock {
  constructor(moma, device) {
    this.moma = moma;
    this.device = device;
    this.ms = Object.fromEntries(CATEGORIES.map((c) => [c, 0]));
    this.ops = {};
    this.opsCpu = {};
  }

  /**
   * Runs one op (queued), waits for the device and charges the time to `category` and to `label`
   * (default: the category); also the process's CPU time (user + system, all threads) to `label`,
   * which a machine shared with other jobs inflates far less than the wall time.
   */
  async time(category, op, label = category) {
    const c0 = process.cpuUsage();
    const t0 = process.hrtime.bigint();
    const out = op();
    await this.moma.synchronize(this.device);
    const ms = Number(process.hrtime.bigint() - t0) / 1e6;
    const cpu = process.cpuUsage(c0);
    this.ms[category] += ms;
    this.ops[label] = (this.ops[label] ?? 0) + ms;
    this.opsCpu[label] = (this.opsCpu[label] ?? 0) + (cpu.user + cpu.system) / 1e3;
    return out;
  }
}

/** The weights of a module in the compute dtype (the float32 parameters themselves when equal). */
function computeWeights(weights, dtype) {
  return Object.fromEntries(Object.entries(weights).map(([name, w]) => [name, w.dtype === dtype ? w : w.astype(dtype)]));
}

function disposeCopies(copies, weights) {
  for (const [name, w] of Object.entries(copies)) if (w !== weights[name]) w.dispose();
}

async function denseReplay(moma, clock, ffn, x, dy) {
  const p = ffn.namedParameters();
  const weights = { w1: p.get('w1.weight'), w2: p.get('w2.weight'), w3: p.get('w3.weight') };
  const { w1, w2, w3 } = computeWeights(weights, x.dtype);  // [out, in]
  const mm = (a, b, o, label) => clock.time('GEMM', () => moma.matmul(a, b, o), label);
  const h1 = await mm(x, w1, { transB: true }, 'GEMM forward');
  const h3 = await mm(x, w3, { transB: true }, 'GEMM forward');
  const a = await clock.time('SwiGLU', () => moma.kernels.swiglu(h1, h3));
  const y = await mm(a, w2, { transB: true }, 'GEMM forward');
  const dw2 = await mm(dy, a, { transA: true }, 'GEMM weight gradient');
  const da = await mm(dy, w2, {}, 'GEMM input gradient');
  const { dh1, dh3 } = await clock.time('SwiGLU', () => moma.kernels.swigluBackward(h1, h3, da));
  const dw1 = await mm(dh1, x, { transA: true }, 'GEMM weight gradient');
  const dw3 = await mm(dh3, x, { transA: true }, 'GEMM weight gradient');
  const dx1 = await mm(dh1, w1, {}, 'GEMM input gradient');
  const dx3 = await mm(dh3, w3, {}, 'GEMM input gradient');
  const dx = await clock.time('add', () => dx1.add(dx3));
  for (const t of [h1, h3, a, dw2, da, dh1, dh3, dw1, dw3, dx1, dx3, dx]) t.dispose();
  disposeCopies({ w1, w2, w3 }, weights);
  return y;
}

async function moeReplay(moma, clock, module, x, modality, dy) {
  const ffn = module.ffn;
  const { layout } = ffn;
  const { router: fn, routing: mode, capacityFactor, topK } = ffn.config;
  const weights = { w1: ffn.w1, w2: ffn.w2, w3: ffn.w3 };
  const { w1, w2, w3 } = computeWeights(weights, x.dtype);
  const router = ffn.router;
  const route = (op, label) => clock.time('routing', op, label);
  const gemm = (op, label) => clock.time('GEMM', op, label);
  const x32 = x.dtype === 'float32' ? x : await route(() => x.astype('float32'), 'router x to float32');
  const partition = await route(() => moma.kernels.moePartition(modality, layout), 'partition');
  const logits = await route(() => moma.matmul(x32, router), 'router logits GEMM (N = E)');
  const scores = await route(() => moma.kernels.routerScores(logits, { rowGroup: partition.rowGroup, layout, fn }), 'router scores');
  const routing = await route(() => moma.kernels.route(scores, partition, { layout, mode, capacityFactor, topK }), 'selection (route)');
  const offs = routing.expertOffsets;
  const xd = await clock.time('dispatch', () => moma.kernels.gatherRows(x, routing.slotRow), 'gather x');
  const { a, h1, h3 } = await gemm(() => moma.kernels.groupedMatmulSwiglu(xd, { w1, w3 }, { offsets: offs, keepPreactivations: true }), 'GEMM forward');
  const out = await gemm(() => moma.kernels.groupedMatmul(a, w2, { offsets: offs }), 'GEMM forward');
  const y = await clock.time('combine', () => moma.kernels.combineRows(out, routing.rowSlots, routing.slotGate), 'combine y');

  const dyc = dy.dtype === out.dtype ? dy : dy.astype(out.dtype);
  const dscores = await clock.time('combine', () => moma.kernels.gateGrad(out, dyc, { slotRow: routing.slotRow, expertOffsets: offs, layout }), 'gate gradient');
  const dout = await clock.time('dispatch', () => moma.kernels.gatherRows(dyc, routing.slotRow, routing.slotGate), 'gather dy');
  const dw2 = await gemm(() => moma.kernels.groupedMatmulWgrad(a, dout, { offsets: offs }), 'GEMM weight gradient');
  const da = await gemm(() => moma.kernels.groupedMatmul(dout, w2, { offsets: offs, transW: true }), 'GEMM input gradient');
  const { dh1, dh3 } = await clock.time('SwiGLU', () => moma.kernels.swigluBackward(h1, h3, da));
  const dw1 = await gemm(() => moma.kernels.groupedMatmulWgrad(xd, dh1, { offsets: offs }), 'GEMM weight gradient');
  const dw3 = await gemm(() => moma.kernels.groupedMatmulWgrad(xd, dh3, { offsets: offs }), 'GEMM weight gradient');
  const dxd1 = await gemm(() => moma.kernels.groupedMatmul(dh1, w1, { offsets: offs, transW: true }), 'GEMM input gradient');
  const dxd3 = await gemm(() => moma.kernels.groupedMatmul(dh3, w3, { offsets: offs, transW: true }), 'GEMM input gradient');
  const dxd = await clock.time('add', () => dxd1.add(dxd3));
  const dxFfn = await clock.time('combine', () => moma.kernels.combineRows(dxd, routing.rowSlots), 'combine dx');
  const dlogits = await route(() => moma.kernels.routerScoresBackward(scores, dscores, { rowGroup: partition.rowGroup, layout, fn }), 'router scores backward');
  const dxRouter = await route(() => moma.matmul(dlogits, router, { transB: true }), 'router dx GEMM (K = E)');
  const drouter = await route(() => moma.matmul(x32, dlogits, { transA: true }), 'router dW GEMM (N = E)');
  const dx = await route(() => (dxRouter.dtype === dxFfn.dtype ? dxFfn.add(dxRouter) : dxFfn.astype('float32').add(dxRouter)), 'router dx add');
  for (const t of [logits, scores, xd, h1, h3, a, out, dscores, dout, dw2, da, dh1, dh3, dw1, dw3, dxd1, dxd3, dxd, dxFfn, dlogits, dxRouter, drouter, dx]) t.dispose();
  disposeCopies({ w1, w2, w3 }, weights);
  for (const [t, orig] of [[x32, x], [dyc, dy]]) if (t !== orig) t.dispose();
  partition.dispose();
  routing.dispose();
  return y;
}

async function maxAbsDiff(a, b) {
  const [u, v] = await Promise.all([a.toArray(), b.toArray()]);
  let m = 0;
  for (let i = 0; i < u.length; i++) m = Math.max(m, Math.abs(u[i] - v[i]));
  return m;
}

/**
 * Replays dense, 4t4i and 8x at T rows (d 1024, f 4096 and the device's dtype — bfloat16 on a GPU, float32 on the CPU — unless
 * `shape` says otherwise) `repeats` times after a warm-up; returns
 * { T, d, f, dtype, variants: [{ name, ms: {category: median ms}, total, ops: {label: median ms}, opsCpu: {label: median CPU ms}, check }] }.
 */
async function layerBreakdown(moma, device, T, repeats, modalityHost, shape = {}) {
  const d = shape.d ?? 1024;
  const f = shape.f ?? 4096;
  const dtype = shape.dtype ?? (device.startsWith('cuda') ? 'bfloat16' : 'float32');
  const gen = new moma.Generator(11);
  const x = moma.randn([T, d], { device, dtype, generator: gen });
  const dy = moma.randn([T, d], { device, dtype, generator: gen, std: 1e-3 });
  const modality = moma.tensor(modalityHost, { device });
  const variants = [
    { name: 'dense', module: new moma.SwiGLUFFN(d, f, { device, generator: gen, std: 0.02 }) },
    { name: 'moma 4t4i', module: new moma.MoEFeedForward({ dModel: d, dFF: f, groups: [{ modality: 'text', experts: 4 }, { modality: 'image', experts: 4 }], device, seed: 3 }) },
    { name: 'moe 8x', module: new moma.MoEFeedForward({ dModel: d, dFF: f, groups: [{ modality: ['text', 'image'], experts: 8 }], device, seed: 3 }) },
  ];
  const out = [];
  for (const v of variants) {
    const isDense = v.name === 'dense';
    const rounds = [];
    for (let round = 0; round <= repeats; round++) {
      const clock = new OpClock(moma, device);
      await moma.synchronize(device);
      const y = isDense ? await denseReplay(moma, clock, v.module, x, dy) : await moeReplay(moma, clock, v.module, x, modality, dy);
      if (round === 0) {
        const ref = moma.tidy(() => moma.noGrad(() => (isDense ? v.module.forward(x) : v.module.forward(x, modality, { training: true }))));
        v.check = await maxAbsDiff(y, ref);
        ref.dispose();
      } else {
        rounds.push({ ...clock.ms, ops: clock.ops, opsCpu: clock.opsCpu });
      }
      y.dispose();
    }
    const ms = Object.fromEntries(CATEGORIES.map((c) => [c, median(rounds.map((r) => r[c]))]));
    const total = median(rounds.map((r) => CATEGORIES.reduce((s, c) => s + r[c], 0)));
    const ops = Object.fromEntries(Object.keys(rounds[0].ops).map((label) => [label, median(rounds.map((r) => r.ops[label]))]));
    const opsCpu = Object.fromEntries(Object.keys(rounds[0].ops).map((label) => [label, median(rounds.map((r) => r.opsCpu[label]))]));
    out.push({ name: v.name, ms, total, ops, opsCpu, check: v.check });
    v.module.dispose();
  }
  for (const t of [x, dy, modality]) t.dispose();
  return { device, T, d, f, dtype, repeats, categories: CATEGORIES, variants: out };
}

/**
 * `node bench/breakdown.js [T d f dtype]` (default 2048 512 1368 float32: the layer of the d-512 training step) on the CPU:
 * prints each variant's categories, its ops and its share of time outside the GEMMs and SwiGLU, as JSON.
 */
async function main() {
  const path = require('path');
  const moma = require(path.join(__dirname, '..', 'dist'));
  const { modalityPattern } = require('./layers');
  const [T, d, f] = [2, 3, 4].map((i, k) => Number(process.argv[i] ?? [2048, 512, 1368][k]));
  const dtype = process.argv[5] ?? 'float32';
  const repeats = Number(process.env.MOMA_BENCH_REPEATS ?? 7);
  const b = await layerBreakdown(moma, 'cpu', T, repeats, modalityPattern(T), { d, f, dtype });
  // the share of the layer that is neither a GEMM nor the SwiGLU (routing, dispatch, combine, adds)
  for (const v of b.variants) v.nonGemmShare = (v.total - v.ms.GEMM - v.ms.SwiGLU) / v.total;
  console.log(JSON.stringify({ ...b, load: require('os').loadavg() }, null, 1));
}

if (require.main === module) {
  main().catch((e) => {
    console.error(e instanceof Error ? e.stack : e);
    process.exitCode = 1;
  });
}

module.exports = { layerBreakdown };
