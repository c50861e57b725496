// Checkpoints: safetensors round trips (a file Python's safetensors reads: layout checked byte by
// byte), corrupt files, and exact resume: 2N steps straight equal N steps, save, load into a fresh
// model and optimizer, N more steps (bit for bit on the CPU).
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { AdamW, backward, makeBatch, MomaError, tensor, tidy, Transformer, TransformerConfig } from '../lib';
import { loadSafetensors, saveSafetensors } from '../lib/io/safetensors';
import { loadCheckpointInto, readCheckpoint, saveCheckpoint } from '../lib/train/checkpoint';
import { mulberry32 } from './support/reference';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'moma-ckpt-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

describe('safetensors', () => {
  test('round trip of every dtype, and the documented layout', async () => {
    const file = path.join(tmp, 'a.safetensors');
    const ts = new Map([
      ['w', tensor(Float32Array.from([1.5, -2, 3.25, 0]), { shape: [2, 2] })],
      ['ids', tensor(Int32Array.from([7, -1, 2147483647]))],
      ['b', tensor(Float32Array.from([1, 0.5, -3]), { dtype: 'bfloat16' })],
      ['u', tensor(Uint8Array.from([0, 255]))],
    ]);
    await saveSafetensors(file, ts, { note: 'x' });
    const raw = fs.readFileSync(file);
    const n = Number(raw.readBigUInt64LE(0));
    expect(n % 8).toBe(0);
    const header = JSON.parse(raw.subarray(8, 8 + n).toString());
    expect(header.__metadata__).toEqual({ note: 'x' });
    expect(header.w).toEqual({ dtype: 'F32', shape: [2, 2], data_offsets: [0, 16] });
    expect(header.b.dtype).toBe('BF16');
    expect(raw.readFloatLE(8 + n + 4)).toBe(-2);
    const back = loadSafetensors(file);
    for (const [name, t] of ts) {
      const u = back.tensors.get(name)!;
      expect(u.dtype).toBe(t.dtype);
      expect(u.shape).toEqual(t.shape);
      expect(Array.from(await u.toArray())).toEqual(Array.from(await t.toArray()));
      u.dispose();
      t.dispose();
    }
  });

  test('truncated, garbage and missing files give ERR_FILE naming the file', () => {
    const file = path.join(tmp, 'bad.safetensors');
    const cases: Buffer[] = [Buffer.alloc(3), Buffer.from([255, 0, 0, 0, 0, 0, 0, 0, 1]), Buffer.concat([Buffer.from([4, 0, 0, 0, 0, 0, 0, 0]), Buffer.from('{x: ')])];
    const header = Buffer.from(JSON.stringify({ w: { dtype: 'F32', shape: [4], data_offsets: [0, 16] } }));
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(header.length));
    cases.push(Buffer.concat([len, header, Buffer.alloc(8)])); // data cut short
    for (const c of cases) {
      fs.writeFileSync(file, c);
      expect(() => loadSafetensors(file)).toThrow(expect.objectContaining({ code: 'ERR_FILE', message: expect.stringContaining(file) }));
    }
    expect(() => loadSafetensors(path.join(tmp, 'none.safetensors'))).toThrow(MomaError);
  });
});

describe('checkpoint resume', () => {
  const config: TransformerConfig = {
    vocabSize: 20, dModel: 8, layers: 2, heads: 2, seed: 4, initStd: 0.1,
    ffn: { kind: 'moe', dFF: 12, groups: [{ modality: 'text', experts: 2 }, { modality: 'image', experts: 2 }] },
  };
  const batch = (step: number) => {
    const rng = mulberry32(100 + step);
    const seqs = [0, 1].map(() => [1, ...Array.from({ length: 9 }, (_, i) => (i % 3 === 2 ? 14 + Math.floor(rng() * 6) : 2 + Math.floor(rng() * 12)))]);
    return makeBatch(seqs, { padId: 0, bosId: 1, modalityOf: (id) => (id >= 14 ? 1 : 0), modalities: 2 });
  };
  const train = async (model: Transformer, opt: AdamW, from: number, to: number): Promise<void> => {
    for (let step = from; step < to; step++) {
      const b = batch(step);
      tidy(() => backward(model.loss(b, { training: true }).loss));
      await opt.update(1e-2);
      opt.zeroGrad();
      for (const t of [b.tokens, b.targets, b.positions, b.segStart, b.modality, b.weights, ...b.modalityWeights]) t.dispose();
    }
  };
  const params = async (m: Transformer): Promise<Map<string, number[]>> => {
    const out = new Map<string, number[]>();
    for (const [name, t] of m.namedParameters()) out.set(name, Array.from(await t.toArray()));
    return out;
  };

  test('N steps + save + load + N steps equals 2N steps, bit for bit', async () => {
    const N = 3;
    const straight = new Transformer(config);
    const optS = new AdamW(straight, { weightDecay: 0.1 });
    await train(straight, optS, 0, 2 * N);

    const first = new Transformer(config);
    const optF = new AdamW(first, { weightDecay: 0.1 });
    await train(first, optF, 0, N);
    const dir = path.join(tmp, 'ckpt');
    await saveCheckpoint(dir, { config, model: first, optimizer: optF, state: { step: N, optimizerStep: optF.step } });
    expect(fs.readdirSync(dir).sort()).toEqual(['checksums.json', 'config.json', 'model.safetensors', 'optimizer.safetensors', 'trainer.json']);
    expect(readCheckpoint(dir).config).toEqual(config);

    const resumed = new Transformer({ ...config, seed: 99 }); // different init: everything must come from the checkpoint
    const optR = new AdamW(resumed, { weightDecay: 0.1 });
    const loaded = loadCheckpointInto(dir, resumed, optR);
    expect(loaded.state.step).toBe(N);
    await train(resumed, optR, N, 2 * N);

    const a = await params(straight);
    const b = await params(resumed);
    expect([...b.keys()]).toEqual([...a.keys()]);
    for (const [name, values] of a) expect(b.get(name)).toEqual(values);
    for (const m of [straight, first, resumed]) m.dispose();
    for (const o of [optS, optF, optR]) o.dispose();
  }, 60000);

  test('a checkpoint with a missing parameter is refused, naming it', async () => {
    const model = new Transformer(config);
    const dir = path.join(tmp, 'ckpt2');
    await saveCheckpoint(dir, { config, model, state: { step: 0, optimizerStep: 0 } });
    const other = new Transformer({ ...config, layers: 3 });
    expect(() => loadCheckpointInto(dir, other)).toThrow(expect.objectContaining({ code: 'ERR_FILE', message: expect.stringContaining("lacks parameter 'layers.2") }));
    model.dispose();
    other.dispose();
  });
});
