// The pure parts of the `comm` bench suite (bench/comm.js): nccl-tests' bandwidth formulas against
// hand-computed values, sizes, the worker's command line, and the rows and table built from a
// measurement. Nothing here is timed or launched.

interface Measurement { collective: string; bytes: number; ms: number; opsPerRound: number; rounds: number[] }
interface Row { op: string; shape: string; ms: number; rate: number; unit: string; algbw_gbs: number; busbw_gbs: number; pct_measured?: number; bytes: number }
interface CommBench {
  parseSize(text: string): number;
  formatSize(bytes: number): string;
  commSizes(env: Record<string, string | undefined>, ranks: number): number[];
  opsPerRound(bytes: number): number;
  algBandwidth(bytes: number, ms: number): number;
  busBandwidth(collective: string, algbw: number, ranks: number): number;
  parseWorkerArgs(argv: string[]): { device: string; sizes: number[]; repeats: number; out: string };
  collectiveRow(m: Measurement, context: { device: string; ranks: number; ceilingGbs: number | null }): Row;
  copyCeiling(results: { device: string; op: string; rate: number }[], kind: string): number | null;
  collectiveTable(rows: Row[], context: { device: string; ranks: number; backend: string; ceilingGbs: number | null }): string[];
  DEFAULT_SIZES: number[];
  ROW_GROUPS: string[];
}

// eslint-disable-next-line @typescript-eslint/no-require-imports
const comm = require('../bench/comm') as CommBench;

describe('bench comm: bandwidths as nccl-tests define them', () => {
  test('algbw is bytes per rank over time, in 1e9 bytes/s', () => {
    // 1 MiB in 1 ms: 1048576 B / 0.001 s = 1.048576e9 B/s
    expect(comm.algBandwidth(1048576, 1)).toBeCloseTo(1.048576, 12);
    // 256 MiB in 250 ms: 268435456 / 0.25 = 1.073741824e9
    expect(comm.algBandwidth(268435456, 250)).toBeCloseTo(1.073741824, 12);
  });

  test('all-reduce busbw = algbw * 2(n-1)/n', () => {
    expect(comm.busBandwidth('all_reduce', 10, 2)).toBeCloseTo(10, 12); // 2*1/2 = 1
    expect(comm.busBandwidth('all_reduce', 10, 4)).toBeCloseTo(15, 12); // 2*3/4 = 1.5
    expect(comm.busBandwidth('all_reduce', 10, 8)).toBeCloseTo(17.5, 12); // 2*7/8 = 1.75
    expect(comm.busBandwidth('all_reduce', 10, 1)).toBe(0);
  });

  test('all-to-all busbw = algbw * (n-1)/n', () => {
    expect(comm.busBandwidth('all_to_all', 10, 2)).toBeCloseTo(5, 12);
    expect(comm.busBandwidth('all_to_all', 10, 4)).toBeCloseTo(7.5, 12);
    expect(comm.busBandwidth('all_to_all', 8, 8)).toBeCloseTo(7, 12);
  });

  test('an unknown collective or a bad rank count throws', () => {
    expect(() => comm.busBandwidth('all_gather', 1, 2)).toThrow(/unknown collective 'all_gather'/);
    expect(() => comm.busBandwidth('all_reduce', 1, 0)).toThrow(/ranks must be an integer >= 1/);
  });
});

describe('bench comm: sizes', () => {
  test('parseSize takes bytes and binary units, formatSize gives them back', () => {
    expect(comm.parseSize('4096')).toBe(4096);
    expect(comm.parseSize('4KiB')).toBe(4096);
    expect(comm.parseSize('16MiB')).toBe(16 * 1024 * 1024);
    expect(comm.parseSize('1GiB')).toBe(1024 ** 3);
    expect(comm.parseSize('12B')).toBe(12);
    expect(comm.formatSize(4096)).toBe('4KiB');
    expect(comm.formatSize(256 * 1024 * 1024)).toBe('256MiB');
    expect(comm.formatSize(1000)).toBe('1000B');
    for (const bad of ['4kb', '-4', '1.5MiB', '', 'MiB', '0']) expect(() => comm.parseSize(bad)).toThrow(/comm: size/);
  });

  test('the default sizes are 4 KiB to 256 MiB in powers of 4', () => {
    expect(comm.DEFAULT_SIZES.map(comm.formatSize)).toEqual(['4KiB', '16KiB', '64KiB', '256KiB', '1MiB', '4MiB', '16MiB', '64MiB', '256MiB']);
    expect(comm.commSizes({}, 2)).toEqual(comm.DEFAULT_SIZES);
    expect(comm.commSizes({ MOMA_BENCH_COMM_SIZES: '' }, 2)).toEqual(comm.DEFAULT_SIZES);
  });

  test('MOMA_BENCH_COMM_SIZES overrides, and each size must split into float32 elements evenly over the ranks', () => {
    expect(comm.commSizes({ MOMA_BENCH_COMM_SIZES: '4KiB,1MiB' }, 2)).toEqual([4096, 1048576]);
    expect(() => comm.commSizes({ MOMA_BENCH_COMM_SIZES: '12' }, 2)).toThrow(/not a multiple of 8 bytes/);
    expect(() => comm.commSizes({ MOMA_BENCH_COMM_SIZES: '4KiB,x' }, 2)).toThrow(/size 'x'/);
  });

  test('a round moves about 64 MiB, 1 to 100 collectives', () => {
    expect(comm.opsPerRound(4096)).toBe(100);
    expect(comm.opsPerRound(1024 * 1024)).toBe(64);
    expect(comm.opsPerRound(16 * 1024 * 1024)).toBe(4);
    expect(comm.opsPerRound(256 * 1024 * 1024)).toBe(1);
  });
});

describe('bench comm: worker arguments', () => {
  test('parses the launched rank command line', () => {
    expect(comm.parseWorkerArgs(['--worker', '--device', 'cpu', '--sizes', '4KiB,4096', '--repeats', '3', '--out', '/tmp/x.json']))
      .toEqual({ device: 'cpu', sizes: [4096, 4096], repeats: 3, out: '/tmp/x.json' });
    expect(comm.parseWorkerArgs(['--worker', '--sizes', '1MiB', '--repeats', '1', '--out', 'o', '--device', 'cuda']).device).toBe('cuda');
  });

  test('rejects what it cannot run', () => {
    const base = ['--sizes', '4096', '--repeats', '2', '--out', 'o'];
    expect(() => comm.parseWorkerArgs(base)).toThrow(/first argument must be --worker/);
    expect(() => comm.parseWorkerArgs(['--worker', '--device', 'tpu', ...base])).toThrow(/--device must be cpu or cuda, got 'tpu'/);
    expect(() => comm.parseWorkerArgs(['--worker', ...base, '--repeats', '0'])).toThrow(/--repeats must be an integer >= 1, got '0'/);
    expect(() => comm.parseWorkerArgs(['--worker', ...base, '--repeats', '2.5'])).toThrow(/--repeats must be an integer >= 1/);
    expect(() => comm.parseWorkerArgs(['--worker', ...base, '--fast'])).toThrow(/unknown argument --fast/);
    expect(() => comm.parseWorkerArgs(['--worker', ...base, '--out'])).toThrow(/--out needs a value/);
    expect(() => comm.parseWorkerArgs(['--worker', '--sizes', '4096', '--out', 'o'])).toThrow(/--repeats is required/);
  });
});

describe('bench comm: rows and table', () => {
  const results = [
    { device: 'cpu', op: 'ceiling.fma_avx512', rate: 300 },
    { device: 'cpu', op: 'ceiling.copy', rate: 40 },
    { device: 'cuda', op: 'ceiling.copy_d2d', rate: 3000 },
  ];

  test('the ceiling is the measured copy bandwidth of the device kind', () => {
    expect(comm.copyCeiling(results, 'cpu')).toBe(40);
    expect(comm.copyCeiling(results, 'cuda')).toBe(3000);
    expect(comm.copyCeiling([], 'cpu')).toBeNull();
  });

  test('a row carries algbw, busbw (as its rate) and % of the copy ceiling', () => {
    // 4 MiB all-to-all on 2 ranks in 2 ms: algbw = 4194304 / 0.002 / 1e9 = 2.097152 GB/s, busbw half of it.
    const m = { collective: 'all_to_all', bytes: 4 * 1024 * 1024, ms: 2, opsPerRound: 16, rounds: [2, 2.1, 1.9] };
    const row = comm.collectiveRow(m, { device: 'cpu', ranks: 2, ceilingGbs: 40 });
    expect(row).toMatchObject({ op: 'comm.all_to_all_f32', shape: '4MiB per rank, 2 ranks', ms: 2, unit: 'GB/s busbw', bytes: 4194304 });
    expect(row.algbw_gbs).toBeCloseTo(2.097152, 12);
    expect(row.busbw_gbs).toBeCloseTo(1.048576, 12);
    expect(row.rate).toBe(row.busbw_gbs);
    expect(row.pct_measured).toBeCloseTo((100 * 1.048576) / 40, 10);
    expect(comm.collectiveRow(m, { device: 'cpu', ranks: 2, ceilingGbs: null }).pct_measured).toBeUndefined();
  });

  test('the table lists both collectives per size and says what is not measured yet', () => {
    const ar = comm.collectiveRow({ collective: 'all_reduce', bytes: 4096, ms: 0.5, opsPerRound: 100, rounds: [0.5] }, { device: 'cpu', ranks: 2, ceilingGbs: 40 });
    const a2a = comm.collectiveRow({ collective: 'all_to_all', bytes: 4096, ms: 0.25, opsPerRound: 100, rounds: [0.25] }, { device: 'cpu', ranks: 2, ceilingGbs: 40 });
    const text = comm.collectiveTable([ar, a2a], { device: 'cpu', ranks: 2, backend: 'gloo', ceilingGbs: 40 }).join('\n');
    // all-reduce: 4096 B / 0.5 ms = 0.008192 GB/s = busbw (n = 2); all-to-all: 0.016384 algbw, 0.008192 busbw;
    // 0.008192 / 40 GB/s = 0.02048 %
    expect(text).toContain('| 4KiB | 0.500 | 0.00819 | 0.00819 | 0.0205 | 0.250 | 0.0164 | 0.00819 | 0.0205 |');
    expect(text).toContain('gloo, 2 ranks');
    expect(text).toMatch(/`scaling`/);
    expect(text).toMatch(/`overlap`/);
    expect(comm.ROW_GROUPS).toEqual(['collectives']);
  });
});
