// The bench's output: one markdown report (header with date, device, load and suites; the result
// table with PyTorch's time next to moma's rows; the moma-vs-PyTorch summary; the MoE layer
// breakdown; the comm suite's tables, in their own section at the end) printed and saved with the JSON of everything under
// bench/results/<date>-<cpu|cuda>-<suites, or all>[-T<rows>].{json,md}.
'use strict';
const fs = require('fs');
const path = require('path');

const signed = (v) => (v === undefined || !Number.isFinite(v) ? '-' : `${v >= 0 ? '+' : '−'}${Math.abs(v).toFixed(1)}`);
const fmt = (v, d = 1) => (v === null || v === undefined || !Number.isFinite(v) || v < 0 ? '-' : Number(v).toFixed(d));

function resultTable(results) {
  const torchCell = (r) => (r.torch_ms !== undefined ? fmt(r.torch_ms, 3) : r.torch ?? '');
  return [
    '| device | op | shape | ms | rate | unit | % measured ceiling | % nominal peak | PyTorch ms | moma / PyTorch |',
    '| --- | --- | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: |',
    ...results.map((r) => `| ${r.device} | ${r.op} | ${r.shape} | ${fmt(r.ms, 3)} | ${fmt(r.rate)} | ${r.unit} | ${fmt(r.pct_measured)} | ${fmt(r.pct_nominal)} | ${torchCell(r)} | ${r.vs_torch !== undefined ? fmt(r.vs_torch, 2) : ''} |`),
  ];
}

function torchSummary(results) {
  const rows = results.filter((r) => r.vs_torch !== undefined && /^(layer|block|step|api)\./.test(r.op));
  if (!rows.length) return [];
  const within = (r) => {
    if (r.ratio_vs_dense !== undefined) return `vs dense: moma ${fmt(r.ratio_vs_dense, 2)}, PyTorch ${fmt(r.torch_ratio_vs_dense, 2)}`;
    if (r.ratio_vs_full !== undefined) return `vs full block: moma ${fmt(r.ratio_vs_full, 2)}, PyTorch ${fmt(r.torch_ratio_vs_full, 2)} (FLOPs ${fmt(r.flops_vs_full, 2)})`;
    return '';
  };
  return [
    '', '### moma vs PyTorch (same shapes, data and thread count; time ratio below 1: moma faster)', '',
    '| op | shape | moma ms | PyTorch ms | moma / PyTorch | time ratios inside the group |',
    '| --- | --- | ---: | ---: | ---: | --- |',
    ...rows.map((r) => `| ${r.op} | ${r.shape} | ${fmt(r.ms, 1)} | ${fmt(r.torch_ms, 1)} | ${fmt(r.vs_torch, 2)} | ${within(r)} |`),
  ];
}

function breakdownTable(b) {
  if (!b) return [];
  const [dense, ...moes] = b.variants;
  const layer = (name) => b.whole?.[name];
  return [
    '', `### Where the MoE layer's time goes (${b.device}, T ${b.T}, d ${b.d}, f ${b.f}; forward + backward, median ms of ${b.repeats} op-by-op replays)`, '',
    `| part | ${b.variants.map((v) => v.name).join(' | ')} | ${moes.map((v) => `${v.name} − dense`).join(' | ')} |`,
    `| --- | ${b.variants.map(() => '---:').join(' | ')} | ${moes.map(() => '---:').join(' | ')} |`,
    ...b.categories.map((c) => `| ${c} | ${b.variants.map((v) => fmt(v.ms[c], 1)).join(' | ')} | ${moes.map((v) => signed(v.ms[c] - dense.ms[c])).join(' | ')} |`),
    `| sum of parts (synchronised after each op) | ${b.variants.map((v) => fmt(v.total, 1)).join(' | ')} | ${moes.map((v) => signed(v.total - dense.total)).join(' | ')} |`,
    `| whole layer, no per-op syncs (layers suite) | ${b.variants.map((v) => fmt(layer(v.name), 1)).join(' | ')} | ${moes.map((v) => signed(layer(v.name) - layer('dense'))).join(' | ')} |`,
    '', `Replay output vs the module's forward, max abs difference: ${b.variants.map((v) => `${v.name} ${v.check.toExponential(1)}`).join(', ')}.`,
  ];
}

const TABLE_NOTE = [
  '', 'Notes: rates are FLOPs (SPEC §6, training = 3 × forward) per time; "% measured ceiling" is of the FMA loop',
  '(CPU) or bf16 GEMM (GPU) measured in the same run. `layer.*`: FFN layers at equal active FLOPs (expert choice,',
  'c = 1). `block.*`: one decoder block with the 4t4i FFN on every row, and the same block as a mixture-of-depths',
  'block at c_d 0.25 (ideal time ≈ its FLOPs ratio; the rest is router, selection, gather/scatter). `step.*`: a',
  'full Trainer step (forward, backward, clip, AdamW) on one built-in-data batch.',
  '`comm.*`: rates are nccl-tests bus bandwidth in GB/s, and "% measured ceiling" is that as % of the memory-copy ceiling',
  '(row ceiling.copy); `scaling.*` rates are training tokens/s, `overlap.*` the % of the gradient all-reduce hidden.',
];

/** The comm suite's tables (collectives, data-parallel scaling, overlap) as the report's last section. */
function commSection(report) {
  if (!report.comm?.length) return [];
  return ['', '## Collectives and data-parallel scaling (comm suite)', ...report.comm];
}

function markdown(report) {
  return [
    `moma bench — ${report.date} — ${report.device}`,
    `suites: ${report.suites.join(', ')}; devices: ${report.devices.join(', ')}; load average at start ${report.load.map((l) => l.toFixed(2)).join(' ')}`,
    ...report.notes,
    '',
    ...resultTable(report.results),
    ...report.results.filter((r) => r.note).map((r, i) => `${i === 0 ? '\n' : ''}- ${r.device} ${r.op}: ${r.note}`),
    ...TABLE_NOTE,
    ...torchSummary(report.results),
    ...report.breakdowns.flatMap(breakdownTable),
    ...commSection(report),
  ].join('\n');
}

/** Writes <slug>.json and <slug>.md under bench/results; returns the slug. */
function saveReport(report, { root, suffix }) {
  const dir = path.join(root, 'bench', 'results');
  fs.mkdirSync(dir, { recursive: true });
  const kind = report.devices.some((d) => d.startsWith('cuda')) ? 'cuda' : 'cpu';
  const slug = `${report.date.slice(0, 10)}-${kind}${suffix}`;
  fs.writeFileSync(path.join(dir, `${slug}.json`), JSON.stringify(report, null, 2) + '\n');
  fs.writeFileSync(path.join(dir, `${slug}.md`), markdown(report) + '\n');
  return slug;
}

module.exports = { markdown, saveReport };
