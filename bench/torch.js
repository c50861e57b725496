// The `torch` suite: PyTorch's time for the same layers, blocks and training steps (and the
// native kernels' shapes when `kernels` ran too), from bench/reference/run.py on the system
// Python (MOMA_TORCH_PYTHON, default /usr/bin/python3) with moma's CPU thread count. Each
// PyTorch time lands on moma's row of the same op and shape as torch_ms and vs_torch
// (moma time / PyTorch time: below 1 moma is faster); PyTorch's 1024³ matmul becomes its own
// ceiling row. Without an importable torch the rows say "skipped: no PyTorch".
'use strict';
const fs = require('fs');
const os = require('os');
const path = require('path');
const { spawnSync } = require('child_process');
const { withCeiling } = require('./common');

const SKIPPED = 'skipped: no PyTorch';

function python() {
  return process.env.MOMA_TORCH_PYTHON || '/usr/bin/python3';
}

/** null when `python -c "import torch"` works, else why not. */
function torchMissing() {
  const probe = spawnSync(python(), ['-c', 'import torch'], { encoding: 'utf8', timeout: 120000 });
  if (probe.error) return `${python()} not runnable (${probe.error.code || probe.error.message})`;
  if (probe.status !== 0) return `${python()} cannot import torch`;
  return null;
}

/** The moma row a PyTorch result belongs to (and, for the ceiling, the GEMM rows of 1024³). */
function pairsOf(rows, result) {
  if (result.op === 'matmul_f32') {
    return rows.filter((r) => r.device === 'cpu' && (r.op === 'api.matmul_f32' || r.op === 'gemm_f32') && r.shape === result.shape);
  }
  return rows.filter((r) => r.device === 'cpu' && r.op === result.op && r.shape === result.shape);
}

/**
 * Runs the PyTorch jobs and annotates `rows` (moma's results so far) in place; returns
 * { notes, rows: new rows (PyTorch's ceiling), info }.
 */
function torchSuite(jobs, rows, { threads, kernels }) {
  const paired = (r) => r.device === 'cpu' && (/^(layer|block|step)\./.test(r.op) || r.op === 'api.matmul_f32');
  const missing = torchMissing();
  if (missing) {
    for (const r of rows.filter(paired)) r.torch = SKIPPED;
    return { notes: [`PyTorch: ${SKIPPED} (${missing})`], rows: [], info: null };
  }
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'moma-bench-torch-'));
  const spec = path.join(dir, 'jobs.json');
  try {
    fs.writeFileSync(spec, JSON.stringify({ threads, kernels, jobs }));
    const run = spawnSync(python(), [path.join(__dirname, 'reference', 'run.py'), '--spec', spec], {
      encoding: 'utf8', maxBuffer: 64 << 20, stdio: ['ignore', 'pipe', 'inherit'],
    });
    if (run.status !== 0) throw new Error(`bench/reference/run.py failed (exit ${run.status}${run.error ? `, ${run.error.message}` : ''})`);
    const records = run.stdout.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l));
    const info = records.find((r) => r.info)?.info ?? null;
    const added = [];
    for (const result of records.filter((r) => !r.info)) {
      for (const row of pairsOf(rows, result)) {
        row.torch_ms = result.ms;
        row.vs_torch = row.ms / result.ms;
        if (result.ratio_vs_dense !== undefined) row.torch_ratio_vs_dense = result.ratio_vs_dense;
        if (result.ratio_vs_full !== undefined) row.torch_ratio_vs_full = result.ratio_vs_full;
      }
      if (result.op === 'matmul_f32') {
        added.push(withCeiling({ device: 'cpu', op: 'torch.matmul_f32', shape: result.shape, ms: result.ms, rate: result.flops / result.ms / 1e6, unit: 'GFLOP/s' }, rows));
      }
    }
    for (const r of rows.filter(paired)) if (r.torch_ms === undefined) r.torch = 'no PyTorch result';
    const notes = info ? [
      `PyTorch ${info.torch}, ${info.threads} threads, BLAS ${info.blas.join(', ') || 'unknown'}; OpenBLAS core ${info.openblas_core}` +
      (info.openblas_coretype_set ? ` (set by run.py: DYNAMIC_ARCH detected ${info.openblas_detected})` : '') +
      `; OMP_WAIT_POLICY ${info.omp_wait_policy}; ATen CPU capability ${info.cpu_capability}`,
    ] : [];
    return { notes, rows: added, info };
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

module.exports = { torchSuite };
