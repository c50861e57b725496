/**
 * Sub-groups of the world (lib/distributed/process_group.ts newGroup, like torch's new_group): 4 CPU
 * ranks (gloo, loopback, started by lib/distributed/launcher.ts) make the groups [3, 1], [0, 2],
 * [2] and [0, 1, 2] (group rank i = world rank ranks[i]); every member runs every collective on
 * each of its groups (the disjoint pairs at the same time) and then on the world. Every result is
 * checked against a plain-TS reference computed from the members' inputs, and so are the failures:
 * bad rank lists (ERR_ARG), a Group not made by newGroup or made before destroy() (ERR_DIST), a
 * root outside the group, non-members getting null.
 * Needs the gloo plugin (built when libgloo-dev is installed; .ci/run installs it).
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { PassThrough } from 'stream';
import { launch } from '../lib/distributed/launcher';
import { ensureDist } from './support/cli';
import { describeGloo } from './support/dist_train';

const WORLD = 4;
const GROUPS = [[3, 1], [0, 2], [2], [0, 1, 2]];
const COLS = 3;

// The rank script's inputs (test/fixtures/dist_groups/rank.js): element i of world rank r's input.
function value(r: number, i: number, salt: number): number {
  return (((r * 7919 + i * 31 + salt * 13) % 17) - 8) / 8;
}
function input(r: number, rows: number, salt: number): number[] {
  return Array.from({ length: rows * COLS }, (_, i) => value(r, i, salt));
}

function reduce(inputs: number[][], op: 'sum' | 'avg' | 'max'): number[] {
  return inputs[0]!.map((_, i) => {
    const column = inputs.map((v) => v[i]!);
    if (op === 'max') return Math.max(...column);
    const sum = column.reduce((a, b) => a + b, 0);
    return op === 'avg' ? Math.fround(sum / inputs.length) : sum;
  });
}

type Results = Record<string, number[] | number[][]>;

/** What group rank `me` of the group of world ranks `ranks` must get from rank.js's collectives(…, salt). */
function reference(ranks: number[], me: number, salt: number): Results {
  const n = ranks.length;
  const all = (rows: number, s: number): number[][] => ranks.map((r) => input(r, rows, s));
  const out: Results = {};
  for (const op of ['sum', 'avg', 'max'] as const) out[`allReduce-${op}`] = reduce(all(2, salt), op);
  out['allReduce-int32-max'] = reduce(all(2, salt + 1).map((v) => v.map((x) => x * 8)), 'max');
  out.reduceScatter = reduce(all(2 * n, salt + 2), 'sum').slice(me * 2 * COLS, (me + 1) * 2 * COLS);
  out.allGather = all(2, salt + 3).flat();
  // group rank s sends (s + d) % 3 rows to d, its rows in order: d's block starts after the rows for ranks < d
  const received: number[] = [];
  ranks.forEach((r, s) => {
    const counts = Array.from({ length: n }, (_, d) => (s + d) % 3);
    const start = counts.slice(0, me).reduce((a, b) => a + b, 0);
    const rows = input(r, counts.reduce((a, b) => a + b, 0), salt + 4);
    received.push(...rows.slice(start * COLS, (start + counts[me]!) * COLS));
  });
  out.allToAll = received;
  out.broadcast = Array.from({ length: n }, (_, root) => input(ranks[root]!, 2, salt + 5 + root));
  return out;
}

interface RankResult {
  rank: number;
  groups: ({ id: number; rank: number; size: number; ranks: number[] } | null)[];
  results: Record<string, Results>;
  errors: Record<string, string | number | null>;
}

describeGloo('sub-group tests')('sub-groups (4 ranks, gloo, loopback)', () => {
  let dir: string;
  beforeAll(() => {
    ensureDist();
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'moma-groups-'));
  });
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

  test('every collective on [3,1], [0,2], [2], [0,1,2] and the world equals the reference; bad groups fail', async () => {
    fs.writeFileSync(path.join(dir, 'groups.json'), JSON.stringify(GROUPS));
    const out = new PassThrough();
    let text = '';
    out.on('data', (chunk: Buffer) => (text += chunk.toString()));
    const result = await launch({
      command: [process.execPath, path.join(__dirname, 'fixtures', 'dist_groups', 'rank.js'), dir],
      nprocPerNode: WORLD, masterPort: 0, timeoutGraceMs: 5000, forwardSignals: false, stdout: out, stderr: out,
      env: { MOMA_DEVICE: 'cpu', MOMA_DIST_TIMEOUT_S: '60', MOMA_NUM_THREADS: '1' },
    });
    if (!result.ok) throw new Error(`${result.message}\n${text}`);

    const ids = new Set<number>();
    for (let r = 0; r < WORLD; r++) {
      const got = JSON.parse(fs.readFileSync(path.join(dir, `rank${r}.json`), 'utf8')) as RankResult;
      expect(got.rank).toBe(r);
      GROUPS.forEach((ranks, k) => {
        const g = got.groups[k]!;
        const me = ranks.indexOf(r);
        if (me < 0) {
          expect(g).toBeNull();
          expect(got.results[k]).toBeUndefined();
          return;
        }
        expect(g).toEqual({ id: expect.any(Number) as number, rank: me, size: ranks.length, ranks });
        ids.add(g.id);
        expect(got.results[k]).toEqual(reference(ranks, me, 100 * (k + 1)));
      });
      expect(got.results.world).toEqual(reference([0, 1, 2, 3], r, 7));
      // ids: the same group has the same id on every member, and no group is the world (0)
      GROUPS.forEach((ranks, k) => {
        if (ranks.includes(r)) expect(got.groups[k]!.id).toBe(k + 1);
      });
      const e = got.errors;
      expect(e.duplicate).toMatch(/^ERR_ARG: newGroup: rank 0 appears twice/);
      expect(e.outOfRange).toMatch(/^ERR_ARG: newGroup: ranks\[1\] = 4 is not a rank of the world/);
      expect(e.empty).toMatch(/^ERR_ARG: newGroup: ranks is empty/);
      expect(e.notAGroup).toMatch(/^ERR_DIST: allReduce: group \d+ does not belong to the current process group/);
      expect(e.rootOutOfGroup).toMatch(/^ERR_ARG: dist_broadcast: root \d is not a rank of the group/);
      expect(e.scatterRows).toMatch(/^ERR_SHAPE: dist_reduce_scatter: .*divisible by the group size/);
      expect(e.destroyed).toMatch(/^ERR_DIST: allReduce: group \d+ does not belong to the current process group/);
      expect(e.destroyedWorld).toMatch(/^ERR_DIST: distributed: no process group/);
    }
    expect([...ids].sort()).toEqual([1, 2, 3, 4]);
  }, 120_000);
});
