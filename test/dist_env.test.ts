/** The rank environment of every launcher (lib/distributed/env.ts): parsing, precedence, and every malformed or inconsistent value. No native addon needed. */
import { MomaError } from '../lib/errors';
import { cpuThreadsForRank, deviceForRank, worldFromEnv, WorldEnv } from '../lib/distributed/env';

type Env = Record<string, string>;

const torchrun: Env = { RANK: '5', LOCAL_RANK: '1', WORLD_SIZE: '8', LOCAL_WORLD_SIZE: '4', GROUP_RANK: '1', MASTER_ADDR: 'node0', MASTER_PORT: '29501' };
const slurm: Env = {
  SLURM_STEP_ID: '0', SLURM_PROCID: '6', SLURM_NTASKS: '7', SLURM_LOCALID: '2', SLURM_NODEID: '1', SLURM_TASKS_PER_NODE: '4,3',
  MASTER_ADDR: 'gpu-a01', MASTER_PORT: '31000',
};
const ompi: Env = { OMPI_COMM_WORLD_RANK: '3', OMPI_COMM_WORLD_SIZE: '4', OMPI_COMM_WORLD_LOCAL_RANK: '1', OMPI_COMM_WORLD_LOCAL_SIZE: '2', MASTER_ADDR: '10.0.0.1' };

/** worldFromEnv(env) must throw a MomaError whose message names `variable`. */
function rejects(env: Env, variable: string, also?: RegExp): void {
  let thrown: unknown;
  try {
    worldFromEnv(env);
  } catch (e) {
    thrown = e;
  }
  expect(thrown).toBeInstanceOf(MomaError);
  const err = thrown as MomaError;
  expect(['ERR_ARG', 'ERR_DIST']).toContain(err.code);
  expect(err.message).toMatch(new RegExp(`\\b${variable}\\b`));
  if (also) expect(err.message).toMatch(also);
}

const without = (env: Env, ...names: string[]): Env => Object.fromEntries(Object.entries(env).filter(([k]) => !names.includes(k)));

describe('worldFromEnv', () => {
  test('no launcher variables: a single process, rank 0 of 1', () => {
    expect(worldFromEnv({ PATH: '/usr/bin', HOME: '/root' })).toEqual<WorldEnv>({
      rank: 0, localRank: 0, worldSize: 1, localWorldSize: 1, nodeRank: 0, masterAddr: '127.0.0.1', masterPort: 29500, launcher: 'single',
    });
  });

  test('torchrun: all seven variables', () => {
    expect(worldFromEnv(torchrun)).toEqual<WorldEnv>({
      rank: 5, localRank: 1, worldSize: 8, localWorldSize: 4, nodeRank: 1, masterAddr: 'node0', masterPort: 29501, launcher: 'torchrun',
    });
  });

  test('moma launch: torchrun variables plus MOMA_LAUNCHER_PID', () => {
    expect(worldFromEnv({ ...torchrun, MOMA_LAUNCHER_PID: '1234' }).launcher).toBe('moma');
  });

  test('torchrun without GROUP_RANK derives the node from RANK / LOCAL_WORLD_SIZE; one process needs no MASTER_ADDR', () => {
    expect(worldFromEnv(without(torchrun, 'GROUP_RANK')).nodeRank).toBe(1);
    expect(worldFromEnv({ RANK: '0', LOCAL_RANK: '0', WORLD_SIZE: '1', LOCAL_WORLD_SIZE: '1' })).toMatchObject({
      rank: 0, worldSize: 1, masterAddr: '127.0.0.1', masterPort: 29500, launcher: 'torchrun',
    });
  });

  test('Slurm (inside an srun step): tasks per node from SLURM_TASKS_PER_NODE, SLURM_STEP_TASKS_PER_NODE first, else SLURM_NTASKS_PER_NODE', () => {
    expect(worldFromEnv(slurm)).toEqual<WorldEnv>({
      rank: 6, localRank: 2, worldSize: 7, localWorldSize: 3, nodeRank: 1, masterAddr: 'gpu-a01', masterPort: 31000, launcher: 'slurm',
    });
    expect(worldFromEnv({ ...slurm, SLURM_PROCID: '9', SLURM_NTASKS: '10', SLURM_NODEID: '2', SLURM_LOCALID: '1', SLURM_TASKS_PER_NODE: '4(x2),2' }).localWorldSize).toBe(2);
    expect(worldFromEnv({ ...slurm, SLURM_STEP_TASKS_PER_NODE: '2,5', SLURM_TASKS_PER_NODE: '1(x7)' }).localWorldSize).toBe(5);
    const perNode = { ...without(slurm, 'SLURM_TASKS_PER_NODE'), SLURM_NTASKS: '8', SLURM_NTASKS_PER_NODE: '4' };
    expect(worldFromEnv(perNode)).toMatchObject({ rank: 6, worldSize: 8, localWorldSize: 4, localRank: 2 });
    expect(worldFromEnv({ ...without(slurm, 'SLURM_STEP_ID'), SLURM_STEPID: '3' }).launcher).toBe('slurm');
  });

  test("Slurm: a batch script's own shell (no step id) is a single process", () => {
    expect(worldFromEnv(without(slurm, 'SLURM_STEP_ID', 'MASTER_ADDR')).launcher).toBe('single');
  });

  test('Open MPI: node derived from the by-slot mapping, MASTER_PORT defaults to 29500', () => {
    expect(worldFromEnv(ompi)).toEqual<WorldEnv>({
      rank: 3, localRank: 1, worldSize: 4, localWorldSize: 2, nodeRank: 1, masterAddr: '10.0.0.1', masterPort: 29500, launcher: 'mpirun',
    });
  });

  test("precedence: torchrun's variables over Slurm's over Open MPI's", () => {
    expect(worldFromEnv({ ...ompi, ...slurm, ...torchrun }).launcher).toBe('torchrun');
    expect(worldFromEnv({ ...ompi, ...slurm }).launcher).toBe('slurm');
    // The losing launchers' variables are not read at all, malformed or not.
    expect(worldFromEnv({ ...torchrun, SLURM_STEP_ID: '0', SLURM_PROCID: 'x', OMPI_COMM_WORLD_RANK: '-1' }).rank).toBe(5);
  });

  describe('malformed values name the variable', () => {
    test.each([
      ['RANK', 'x'], ['RANK', '-1'], ['RANK', '1.5'], ['RANK', ''], ['RANK', ' 1'], ['RANK', '1e3'], ['RANK', '99999999999999999999'],
      ['LOCAL_RANK', 'one'], ['WORLD_SIZE', '0'], ['WORLD_SIZE', '8 '], ['LOCAL_WORLD_SIZE', '0'], ['GROUP_RANK', 'a'],
      ['MASTER_PORT', '0'], ['MASTER_PORT', '65536'], ['MASTER_PORT', 'http'], ['MASTER_ADDR', ''], ['MASTER_ADDR', 'two hosts'],
    ])('torchrun %s=%j', (name, value) => rejects({ ...torchrun, [name]: value }, name));

    test.each([
      ['SLURM_PROCID', 'x'], ['SLURM_NTASKS', '0'], ['SLURM_LOCALID', '-2'], ['SLURM_NODEID', '1.0'],
      ['SLURM_TASKS_PER_NODE', '4,x'], ['SLURM_TASKS_PER_NODE', '4(x0),3'], ['SLURM_TASKS_PER_NODE', '0,7'], ['SLURM_TASKS_PER_NODE', ''],
      ['MASTER_PORT', '70000'],
    ])('Slurm %s=%j', (name, value) => rejects({ ...slurm, [name]: value }, name));

    test.each([
      ['OMPI_COMM_WORLD_RANK', 'r'], ['OMPI_COMM_WORLD_SIZE', '0'], ['OMPI_COMM_WORLD_LOCAL_RANK', '+1'], ['OMPI_COMM_WORLD_LOCAL_SIZE', '2.5'],
    ])('Open MPI %s=%j', (name, value) => rejects({ ...ompi, [name]: value }, name));
  });

  describe('inconsistent values name the variables', () => {
    test('rank >= size', () => {
      rejects({ ...torchrun, RANK: '8' }, 'RANK', /WORLD_SIZE=8/);
      rejects({ ...torchrun, LOCAL_RANK: '4', RANK: '8', WORLD_SIZE: '12' }, 'LOCAL_RANK', /LOCAL_WORLD_SIZE=4/);
      rejects({ ...slurm, SLURM_PROCID: '7' }, 'SLURM_PROCID', /SLURM_NTASKS=7/);
      rejects({ ...slurm, SLURM_LOCALID: '3' }, 'SLURM_LOCALID');
      rejects({ ...ompi, OMPI_COMM_WORLD_RANK: '4' }, 'OMPI_COMM_WORLD_RANK', /OMPI_COMM_WORLD_SIZE=4/);
      rejects({ ...ompi, OMPI_COMM_WORLD_LOCAL_RANK: '2' }, 'OMPI_COMM_WORLD_LOCAL_RANK');
    });

    test('local sizes and nodes that do not fit the world', () => {
      rejects({ ...torchrun, LOCAL_WORLD_SIZE: '16', LOCAL_RANK: '5' }, 'LOCAL_WORLD_SIZE', /must not exceed WORLD_SIZE=8/);
      rejects({ ...torchrun, RANK: '0', LOCAL_RANK: '1' }, 'LOCAL_RANK');
      rejects({ ...torchrun, RANK: '7', LOCAL_RANK: '0', WORLD_SIZE: '8', LOCAL_WORLD_SIZE: '4', GROUP_RANK: '1' }, 'RANK', /ranks 7\.\.10/);
      rejects({ ...torchrun, GROUP_RANK: '2' }, 'GROUP_RANK');
      rejects({ ...slurm, SLURM_TASKS_PER_NODE: '4,4' }, 'SLURM_TASKS_PER_NODE', /adds up to 8 tasks, but SLURM_NTASKS=7/);
      rejects({ ...slurm, SLURM_NODEID: '2' }, 'SLURM_NODEID');
      rejects({ ...without(slurm, 'SLURM_TASKS_PER_NODE'), SLURM_NTASKS_PER_NODE: '9' }, 'SLURM_NTASKS_PER_NODE');
      rejects({ ...ompi, OMPI_COMM_WORLD_LOCAL_SIZE: '5', OMPI_COMM_WORLD_LOCAL_RANK: '0' }, 'OMPI_COMM_WORLD_LOCAL_SIZE');
    });

    test('partial sets name what is missing', () => {
      for (const name of ['RANK', 'LOCAL_RANK', 'WORLD_SIZE', 'LOCAL_WORLD_SIZE']) rejects(without(torchrun, name), name, /set them all or none/);
      rejects({ GROUP_RANK: '0' }, 'RANK');
      for (const name of ['SLURM_PROCID', 'SLURM_NTASKS', 'SLURM_LOCALID', 'SLURM_NODEID']) rejects(without(slurm, name), name);
      rejects(without(slurm, 'SLURM_TASKS_PER_NODE'), 'SLURM_TASKS_PER_NODE', /SLURM_NTASKS_PER_NODE/);
      for (const name of ['OMPI_COMM_WORLD_RANK', 'OMPI_COMM_WORLD_SIZE', 'OMPI_COMM_WORLD_LOCAL_RANK', 'OMPI_COMM_WORLD_LOCAL_SIZE']) rejects(without(ompi, name), name);
    });

    test('several processes without MASTER_ADDR', () => {
      rejects(without(torchrun, 'MASTER_ADDR'), 'MASTER_ADDR');
      rejects(without(slurm, 'MASTER_ADDR'), 'MASTER_ADDR', /scontrol show hostnames/);
      rejects(without(ompi, 'MASTER_ADDR'), 'MASTER_ADDR', /mpirun -x MASTER_ADDR/);
    });
  });
});

describe('deviceForRank', () => {
  const world = worldFromEnv(torchrun); // local rank 1 of 4
  test('cuda:LOCAL_RANK with GPUs, the CPU without', () => {
    expect(deviceForRank(world, 4)).toBe('cuda:1');
    expect(deviceForRank(world, 8)).toBe('cuda:1');
    expect(deviceForRank(world, 0)).toBe('cpu');
  });
  test('more ranks on the node than GPUs is an error on every rank', () => {
    for (const localRank of [0, 1, 3]) {
      expect(() => deviceForRank({ ...world, localRank }, 2)).toThrow(expect.objectContaining({ code: 'ERR_DEVICE', message: expect.stringMatching(/4 ranks on this node.*2 are visible/) }));
    }
    expect(() => deviceForRank(world, -1)).toThrow(MomaError);
    expect(() => deviceForRank(world, 1.5)).toThrow(MomaError);
  });
});

describe('cpuThreadsForRank', () => {
  test('an even split, the remainder to the first ranks, summing to the cores', () => {
    const shares = (cores: number, n: number): number[] => Array.from({ length: n }, (_, localRank) => cpuThreadsForRank({ localRank, localWorldSize: n }, cores));
    expect(shares(16, 4)).toEqual([4, 4, 4, 4]);
    expect(shares(10, 4)).toEqual([3, 3, 2, 2]);
    expect(shares(7, 1)).toEqual([7]);
    for (const [cores, n] of [[64, 8], [2, 2], [13, 5]] as const) expect(shares(cores, n).reduce((a, b) => a + b, 0)).toBe(cores);
  });
  test('at least one thread each when there are more ranks than cores', () => {
    expect(cpuThreadsForRank({ localRank: 3, localWorldSize: 4 }, 2)).toBe(1);
    expect(() => cpuThreadsForRank({ localRank: 0, localWorldSize: 1 }, 0)).toThrow(MomaError);
  });
});
