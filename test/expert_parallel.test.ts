/**
 * Expert parallelism for expert choice (lib/moe/expert_parallel.ts): 2 CPU ranks (gloo, loopback,
 * started by lib/distributed/launcher.ts), each with its own T rows, against one process running
 * the unsharded MoMaFFN of the same config and seed on the concatenated 2T rows. Per case: each
 * rank's output and input gradient equal the single process's rows, each rank's expert weight
 * gradients equal the single process's slices for its experts, and the router gradient shares sum
 * (all-reduced) to the single process's router gradient, all within 1e-5 relative (float32).
 * Also: the exchange plan (pure host arithmetic) on 4 simulated ranks reproduces the single
 * process's dispatch and combine; a group whose experts do not divide the ranks is ERR_ARG.
 * Needs the gloo plugin (built when libgloo-dev is installed; .ci/run installs it).
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { PassThrough } from 'stream';
import { tensor } from '../lib/creation';
import { launch } from '../lib/distributed/launcher';
import { ExpertParallelMoMaFFN, localExperts, planExchange } from '../lib/moe/expert_parallel';
import { MoMaFFN, MoMaFFNConfig } from '../lib/moe/moma_ffn';
import { moePartition, route, routerScores } from '../lib/moe/ops';
import { matmul } from '../lib/ops';
import { Generator } from '../lib/random';
import { ensureDist } from './support/cli';

const root = path.join(__dirname, '..');
const plugin = path.join(root, 'build', 'Release', 'libmoma_gloo.so');
const describeGloo = fs.existsSync(plugin) ? describe : describe.skip;
if (!fs.existsSync(plugin)) console.log(`expert parallel tests skipped: no gloo plugin at ${plugin} (apt-get install libgloo-dev, then npm run build:native)`);

const RANKS = 2;

interface Case {
  name: string;
  /** Rows per rank. */
  T: number;
  config: MoMaFFNConfig;
  /** Modality of each of the RANKS·T rows: 't' text, 'i' image, '.' padding (a string per rank). */
  rows: string[];
  training?: boolean;
  generatorSeed?: number;
}

const CASES: Case[] = [
  {
    name: '4t4i', T: 13, config: { dModel: 16, dFF: 24, groups: [{ modality: 'text', experts: 4 }, { modality: 'image', experts: 4 }], seed: 11 },
    rows: ['tttiiii.tttii', 'iit..ttttiiit'],
  },
  {
    name: '2t2i-softmax-c1.5', T: 7,
    config: { dModel: 8, dFF: 12, groups: [{ modality: 'text', experts: 2 }, { modality: 'image', experts: 2 }], router: 'softmax', capacityFactor: 1.5, seed: 12 },
    rows: ['titiitt', '..i....'],
  },
  {
    name: '4t4i-gumbel', T: 10, training: true, generatorSeed: 7,
    config: { dModel: 16, dFF: 8, groups: [{ modality: 'text', experts: 4 }, { modality: 'image', experts: 4 }], gumbel: true, seed: 13 },
    rows: ['iiiiittttt', 't.t.t.iiii'],
  },
  {
    name: 'moe4-mixed-c0.5', T: 9,
    config: { dModel: 12, dFF: 16, groups: [{ modality: ['text', 'image'], experts: 4 }], capacityFactor: 0.5, seed: 14 },
    rows: ['tiitt.iti', 'ititi.ttt'],
  },
  {
    name: '2t4i-no-image-rows', T: 5,
    config: { dModel: 8, dFF: 8, groups: [{ modality: 'text', experts: 2 }, { modality: 'image', experts: 4 }], seed: 15 },
    rows: ['tt.tt', 't.ttt'],
  },
  {
    name: '4t4i-token-choice', T: 11,
    config: { dModel: 8, dFF: 12, groups: [{ modality: 'text', experts: 4 }, { modality: 'image', experts: 4 }], routing: 'token-choice', topK: 2, seed: 16 },
    rows: ['ttiittiitt.', 'iiiiitttt.t'],
  },
];

/** Deterministic values in [-1, 1) (mulberry32). */
function uniform(n: number, seed: number): Float32Array {
  let a = seed >>> 0;
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    out[i] = (((t ^ (t >>> 14)) >>> 0) / 4294967296) * 2 - 1;
  }
  return out;
}

function modalityIds(rows: string[]): Int32Array {
  return Int32Array.from(rows.join('').split('').map((c) => (c === 't' ? 0 : c === 'i' ? 1 : -1)));
}

function read(file: string): Float32Array {
  const bytes = fs.readFileSync(file);
  return new Float32Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength));
}

/** max |a − b| ≤ 1e-5 · max |b| (relative to the tensor's scale). */
function expectClose(a: Float32Array, b: Float32Array, what: string): void {
  expect(a.length).toBe(b.length);
  let worst = 0;
  let scale = 0;
  for (let i = 0; i < a.length; i++) {
    worst = Math.max(worst, Math.abs(a[i]! - b[i]!));
    scale = Math.max(scale, Math.abs(b[i]!));
  }
  if (!(worst <= 1e-5 * Math.max(scale, 1e-12))) throw new Error(`${what}: max difference ${worst} (largest value ${scale})`);
}

/** Experts [first, first + count) of a stacked [E, ...] array with `per` values per expert. */
function experts(values: Float32Array, ids: readonly number[], per: number): Float32Array {
  const out = new Float32Array(ids.length * per);
  ids.forEach((e, l) => out.set(values.subarray(e * per, (e + 1) * per), l * per));
  return out;
}

interface Reference { y: Float32Array; dx: Float32Array; w1: Float32Array; w3: Float32Array; w2: Float32Array; router: Float32Array }

async function singleProcess(c: Case, x: Float32Array, modality: Int32Array, dy: Float32Array): Promise<Reference> {
  const n = RANKS * c.T;
  const d = c.config.dModel;
  const ffn = new MoMaFFN({ ...c.config, device: 'cpu' });
  const xt = tensor(x, { shape: [n, d], device: 'cpu' });
  const mt = tensor(modality, { shape: [n], dtype: 'int32', device: 'cpu' });
  const dyt = tensor(dy, { shape: [n, d], device: 'cpu' });
  const generator = c.generatorSeed === undefined ? undefined : new Generator(c.generatorSeed);
  const { y, ctx } = ffn.forward(xt, mt, { training: c.training === true, generator });
  const { dx, grads } = ffn.backward(ctx, dyt);
  const values = async (t: { toArray(): Promise<ArrayLike<number>>; dispose(): void }): Promise<Float32Array> => {
    const out = Float32Array.from(await t.toArray());
    t.dispose();
    return out;
  };
  const out = {
    y: await values(y), dx: await values(dx), w1: await values(grads.w1), w3: await values(grads.w3), w2: await values(grads.w2),
    router: await values(grads.router),
  };
  ctx.dispose();
  for (const t of [xt, mt, dyt]) t.dispose();
  ffn.dispose();
  return out;
}

describeGloo('expert parallel for expert choice (2 ranks, gloo, loopback)', () => {
  let dir: string;
  beforeAll(() => {
    ensureDist();
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'moma-ep-'));
  });
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

  test('each rank equals its rows of one process routing the 2 ranks\' micro-batches as one: output, input, router and expert gradients', async () => {
    const inputs = new Map<string, { x: Float32Array; modality: Int32Array; dy: Float32Array }>();
    CASES.forEach((c, k) => {
      const n = RANKS * c.T;
      const d = c.config.dModel;
      expect(c.rows.map((r) => r.length)).toEqual([c.T, c.T]);
      const input = { x: uniform(n * d, 100 + k), modality: modalityIds(c.rows), dy: uniform(n * d, 200 + k) };
      inputs.set(c.name, input);
      fs.mkdirSync(path.join(dir, c.name));
      fs.writeFileSync(path.join(dir, c.name, 'x.bin'), Buffer.from(input.x.buffer));
      fs.writeFileSync(path.join(dir, c.name, 'modality.bin'), Buffer.from(input.modality.buffer));
      fs.writeFileSync(path.join(dir, c.name, 'dy.bin'), Buffer.from(input.dy.buffer));
    });
    fs.writeFileSync(path.join(dir, 'cases.json'), JSON.stringify(CASES));
    const out = new PassThrough();
    let text = '';
    out.on('data', (chunk: Buffer) => (text += chunk.toString()));
    const result = await launch({
      command: [process.execPath, path.join(__dirname, 'fixtures', 'expert_parallel', 'rank.js'), dir],
      nprocPerNode: RANKS, masterPort: 0, timeoutGraceMs: 5000, forwardSignals: false, stdout: out, stderr: out,
      env: { MOMA_DEVICE: 'cpu', MOMA_DIST_TIMEOUT_S: '60' },
    });
    if (!result.ok) throw new Error(`${result.message}\n${text}`);

    for (const c of CASES) {
      const { x, modality, dy } = inputs.get(c.name)!;
      const ref = await singleProcess(c, x, modality, dy);
      const { dModel: d, dFF: f } = c.config;
      const layout = { experts: c.config.groups.map((g) => g.experts), groupOfModality: [] };
      const file = (rank: number, name: string): string => path.join(dir, c.name, `rank${rank}-${name}.bin`);
      for (let rank = 0; rank < RANKS; rank++) {
        const what = `${c.name} rank ${rank}`;
        const rows = (values: Float32Array): Float32Array => values.slice(rank * c.T * d, (rank + 1) * c.T * d);
        expectClose(read(file(rank, 'y')), rows(ref.y), `${what} y`);
        expectClose(read(file(rank, 'dx')), rows(ref.dx), `${what} dx`);
        const mine = localExperts(layout, rank, RANKS);
        const plan = JSON.parse(fs.readFileSync(path.join(dir, c.name, `rank${rank}-plan.json`), 'utf8')) as { localExperts: number[] };
        expect(plan.localExperts).toEqual(mine);
        expectClose(read(file(rank, 'w1')), experts(ref.w1, mine, d * f), `${what} dw1`);
        expectClose(read(file(rank, 'w3')), experts(ref.w3, mine, d * f), `${what} dw3`);
        expectClose(read(file(rank, 'w2')), experts(ref.w2, mine, f * d), `${what} dw2`);
        expectClose(read(file(rank, 'routerSum')), ref.router, `${what} all-reduced router gradient`);
      }
      // the shares themselves add up to the single process's router gradient
      const a = read(file(0, 'router'));
      const b = read(file(1, 'router'));
      expectClose(a.map((v, i) => v + b[i]!), ref.router, `${c.name} router shares`);
      // the forward exchange: what rank h sends to rank p is what p receives from h
      const plans = [0, 1].map((r) => JSON.parse(fs.readFileSync(path.join(dir, c.name, `rank${r}-plan.json`), 'utf8')) as { sendCounts: number[]; recvCounts: number[] });
      for (let h = 0; h < RANKS; h++) for (let p = 0; p < RANKS; p++) expect(plans[h]!.sendCounts[p]).toBe(plans[p]!.recvCounts[h]);
    }
  }, 60_000);
});

describe('expert parallel placement and exchange plan (one process)', () => {
  test('expert counts not divisible by expertParallel are ERR_ARG, before any process group is needed', () => {
    const config = { dModel: 8, dFF: 8, groups: [{ modality: 'text', experts: 1 }, { modality: 'image', experts: 1 }], device: 'cpu' as const };
    expect(() => new ExpertParallelMoMaFFN({ ...config, expertParallel: 2 })).toThrow(expect.objectContaining({ code: 'ERR_ARG' }));
    expect(() => new ExpertParallelMoMaFFN({ ...config, expertParallel: 0 })).toThrow(expect.objectContaining({ code: 'ERR_ARG' }));
    expect(() => new ExpertParallelMoMaFFN({ ...config, groups: [{ modality: 'text', experts: 4 }], expertParallel: 2 }))
      .toThrow(expect.objectContaining({ code: 'ERR_DIST' }));
    expect(localExperts({ experts: [6, 2], groupOfModality: [0, 1] }, 1, 2)).toEqual([3, 4, 5, 7]);
  });

  test('on 4 simulated ranks the plans move every slot to its expert\'s rank and back in the single process\'s order', async () => {
    const N = 4;
    const T = 6;
    const layout = { experts: [4, 8], groupOfModality: [0, 1] };
    const E = 12;
    const x = uniform(N * T * 4, 5);
    const modality = Int32Array.from({ length: N * T }, (_, t) => (t % 7 === 3 ? -1 : t % 3 === 0 ? 1 : 0));
    const xt = tensor(x, { shape: [N * T, 4], device: 'cpu' });
    const router = tensor(uniform(4 * E, 6), { shape: [4, E], device: 'cpu' });
    const mt = tensor(modality, { shape: [N * T], dtype: 'int32', device: 'cpu' });
    const partition = moePartition(mt, layout);
    const logits = matmul(xt, router);
    const scores = routerScores(logits, { rowGroup: partition.rowGroup, layout });
    const routing = route(scores, partition, { layout, capacityFactor: 1.25 });
    const [off, slotRow, slotGate] = await Promise.all([routing.expertOffsets.toArray(), routing.slotRow.toArray(), routing.slotGate.toArray()]);
    const plans = Array.from({ length: N }, (_, rank) => planExchange({ expertOffsets: off, slotRow, slotGate }, { layout, rank, size: N, rows: T }));
    // all-to-all on the host: rank p receives, in rank order h, the block h sends to p; a "row" is its global row id
    const blocks = plans.map((plan, h) => {
      let start = 0;
      return plan.sendCounts.map((count) => Array.from(plan.sendRows.subarray(start, (start += count)), (row) => row + h * T));
    });
    for (let p = 0; p < N; p++) {
      const received = blocks.flatMap((b) => b[p]!);
      expect(received.length).toBe(plans[p]!.recvCounts.reduce((a, b) => a + b, 0));
      const local = Array.from(plans[p]!.localFromRecv, (r) => received[r]!);
      // expert-major order of the single process, restricted to this rank's experts
      const expected = localExperts(layout, p, N).flatMap((e) => Array.from(slotRow.slice(off[e]!, off[e + 1]!)));
      expect(local).toEqual(expected);
      expect(Array.from(plans[p]!.recvFromLocal, (l) => local[l])).toEqual(received);
    }
    // home side: the slots of each rank's rows, in the single process's order, and their gates
    for (let h = 0; h < N; h++) {
      const plan = plans[h]!;
      const slots = Array.from({ length: E }, (_, e) => e).flatMap((e) =>
        Array.from({ length: off[e + 1]! - off[e]! }, (_, i) => off[e]! + i).filter((s) => Math.floor(slotRow[s]! / T) === h));
      expect(Array.from(plan.homeSlotRow)).toEqual(slots.map((s) => slotRow[s]! - h * T));
      expect(Array.from(plan.homeGate)).toEqual(slots.map((s) => slotGate[s]!));
      expect(Array.from(plan.homeFromSend, (k) => plan.sendRows[k])).toEqual(Array.from(plan.homeSlotRow));
    }
    for (const t of [xt, router, mt, logits, scores]) t.dispose();
    partition.dispose();
    routing.dispose();
  });
});
