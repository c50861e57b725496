// Shared pieces of `npm run bench`: medians, interleaved timing rounds, environment knobs and
// the measured ceilings that every rate is a fraction of (the FMA loop on the CPU, the bf16 GEMM
// on a GPU). Times always end with a device synchronisation.
'use strict';

function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

/** A positive integer from the environment (MOMA_BENCH_*), else `fallback`. */
function envInt(name, fallback) {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  const v = Number(raw);
  if (!Number.isInteger(v) || v < 1) throw new Error(`${name} must be an integer >= 1, got '${raw}'`);
  return v;
}

function disposeAll(obj) {
  for (const v of Object.values(obj)) if (v && typeof v.dispose === 'function') v.dispose();
}

const isCuda = (device) => device.startsWith('cuda');
const deviceKind = (device) => (isCuda(device) ? 'cuda' : 'cpu');
/** GFLOP/s on the CPU, TFLOP/s on a GPU: [unit, FLOPs per ms of one unit]. */
const flopUnit = (device) => (isCuda(device) ? ['TFLOP/s', 1e9] : ['GFLOP/s', 1e6]);

/**
 * Runs `variants` ({ run: async () => void }) in interleaved rounds (a, b, c, a, b, c, …) so that
 * drifts of a shared machine's speed hit all alike; round 0 is the warm-up. Returns each
 * variant's times in ms (one per timed round).
 */
async function interleavedRounds(moma, device, variants, repeats) {
  const times = variants.map(() => []);
  for (let round = 0; round <= repeats; round++) {
    for (const [i, variant] of variants.entries()) {
      const t0 = process.hrtime.bigint();
      await variant.run(round);
      await moma.synchronize(device);
      const ms = Number(process.hrtime.bigint() - t0) / 1e6;
      if (round > 0) times[i].push(ms);
    }
  }
  return times;
}

/** Median over rounds of times[i][r] / base[r]. */
function medianRatio(times, base) {
  return median(times.map((t, r) => t / base[r]));
}

/** The measured FLOP-rate ceiling of a device kind among the results (in that kind's unit), or null. */
function flopCeiling(results, kind) {
  const row = kind === 'cpu'
    ? results.find((r) => r.device === 'cpu' && r.op.startsWith('ceiling.fma'))
    : results.find((r) => r.device === 'cuda' && r.op === 'ceiling.gemm_bf16');
  if (!row) return null;
  return kind === 'cuda' && row.unit === 'GFLOP/s' ? row.rate / 1000 : row.rate;
}

/** Adds % of the measured ceiling (and of the nominal CPU peak) to a FLOP-rate row. */
function withCeiling(row, results) {
  const ceiling = flopCeiling(results, row.device);
  if (ceiling) row.pct_measured = (100 * row.rate) / ceiling;
  if (row.device === 'cpu') row.pct_nominal = (100 * row.rate) / Number(process.env.MOMA_CPU_PEAK_GFLOPS || 256);
  return row;
}

module.exports = { median, envInt, disposeAll, isCuda, deviceKind, flopUnit, interleavedRounds, medianRatio, withCeiling };
