#!/usr/bin/env node
// Causal-inference report (issue 7, SPEC §4): for MoMa 4t4i and 4t4i+MoD on the built-in data,
// train the main model (moma train defaults), train the auxiliary routers (moma train-aux, at
// each learning rate given), then compare the held-out loss in causal mode (aux routers) with
// training mode (batch top-k) and list each router's accuracy, precision and recall.
//
//   node bench/causal.js [--presets tiny-4t4i,tiny-4t4i-mod] [--steps 1000] [--aux-steps 1000]
//                        [--aux-lr 1e-4,1e-3] [--runs DIR] [--out bench/results]
//
// Runs already in --runs (<runs>/<preset>) are reused. Writes <out>/<date>-<cpu|cuda>-causal.{json,md}.
'use strict';
const fs = require('fs');
const os = require('os');
const path = require('path');

const root = path.resolve(__dirname, '..');
const moma = require(path.join(root, 'dist'));
const { trainRun } = require(path.join(root, 'dist/train/run'));
const { trainAuxRouters } = require(path.join(root, 'dist/train/aux_train'));
const { evaluateCausal } = require(path.join(root, 'dist/train/causal_eval'));
const { openCheckpoint, loadModel, loadAuxRouters, openStageData, stageHeldOut } = require(path.join(root, 'dist/train/checkpoint_source'));
const { vocabFromSpec } = require(path.join(root, 'dist/train/evaluate'));

function parseArgs(argv) {
  const o = { presets: ['tiny-4t4i', 'tiny-4t4i-mod'], steps: 1000, auxSteps: 1000, auxLr: [1e-4, 1e-3], runs: path.join(root, 'runs/causal'), out: path.join(root, 'bench/results') };
  for (let i = 0; i < argv.length; i += 2) {
    const [flag, value] = [argv[i], argv[i + 1]];
    if (value === undefined) throw new Error(`${flag} needs a value`);
    if (flag === '--presets') o.presets = value.split(',');
    else if (flag === '--steps') o.steps = Number(value);
    else if (flag === '--aux-steps') o.auxSteps = Number(value);
    else if (flag === '--aux-lr') o.auxLr = value.split(',').map(Number);
    else if (flag === '--runs') o.runs = path.resolve(value);
    else if (flag === '--out') o.out = path.resolve(value);
    else throw new Error(`unknown flag ${flag}`);
  }
  return o;
}

const f3 = (x) => (Number.isNaN(x) ? '-' : x.toFixed(3));
const pct = (x) => (Number.isNaN(x) ? '-' : `${(100 * x).toFixed(1)}%`);

async function main() {
  const o = parseArgs(process.argv.slice(2));
  const device = moma.cudaAvailable() ? 'cuda:0' : 'cpu';
  const results = [];
  for (const preset of o.presets) {
    const runDir = path.join(o.runs, preset);
    if (!fs.existsSync(path.join(runDir, 'run.json'))) {
      const t0 = Date.now();
      const s = await trainRun({ values: { preset, steps: o.steps, out: runDir, device } });
      console.error(`${preset}: trained ${s.steps} steps in ${((Date.now() - t0) / 1000).toFixed(0)} s`);
    }
    for (const lr of o.auxLr) {
      const summary = await trainAuxRouters({ checkpoint: runDir, steps: o.auxSteps, lr, lrEnd: lr / 100, device });
      const source = openCheckpoint(runDir, 'bench');
      const model = loadModel(source, device);
      const aux = loadAuxRouters(source.dir, model, 'bench');
      const heldOut = stageHeldOut(await openStageData(source, 'bench'));
      const r = await evaluateCausal(model, aux, heldOut, vocabFromSpec(source.layout), 8);
      aux.dispose();
      model.dispose();
      console.error(`${preset} aux lr ${lr}: ${summary.steps} steps in ${summary.seconds.toFixed(0)} s; loss training ${f3(r.training.loss)} causal ${f3(r.causal.loss)}`);
      results.push({ preset, checkpoint: path.relative(root, source.dir), auxLr: lr, auxSteps: summary.steps, auxSeconds: summary.seconds, training: r.training, causal: r.causal, routers: r.routers });
    }
  }
  const date = new Date().toISOString().slice(0, 10);
  const kind = device === 'cpu' ? 'cpu' : 'cuda';
  const env = { date: new Date().toISOString(), device, cpu: os.cpus()[0]?.model, threads: os.cpus().length, moma: require(path.join(root, 'package.json')).version };
  fs.mkdirSync(o.out, { recursive: true });
  const base = path.join(o.out, `${date}-${kind}-causal`);
  fs.writeFileSync(`${base}.json`, JSON.stringify({ env, settings: o, results }, null, 2) + '\n');
  fs.writeFileSync(`${base}.md`, markdown(env, o, results));
  console.log(markdown(env, o, results));
  console.error(`wrote ${path.relative(process.cwd(), base)}.{json,md}`);
}

function markdown(env, o, results) {
  const lines = [
    `# Causal inference: auxiliary routers (${env.date.slice(0, 10)}, ${env.device}${env.device === 'cpu' ? `, ${env.cpu}, ${env.threads} threads` : ''})`,
    '',
    `Main models: \`moma train --preset P --steps ${o.steps}\` on the built-in captioned shapes. Auxiliary routers: \`moma train-aux --steps ${o.auxSteps} --lr LR --lr-end LR/100\`. Held-out: the run's eval batches.`,
    '',
    '## Loss, training mode (batch top-k) vs causal mode (aux routers)',
    '',
    '| model | aux LR | training: all | text | image | causal: all | text | image | Δ all | Δ text | Δ image |',
    '|---|---|---|---|---|---|---|---|---|---|---|',
  ];
  for (const r of results) {
    const d = (k) => (k === 'all' ? r.causal.loss - r.training.loss : r.causal.perModality[k] - r.training.perModality[k]);
    lines.push(`| ${r.preset} | ${r.auxLr} | ${f3(r.training.loss)} | ${f3(r.training.perModality.text)} | ${f3(r.training.perModality.image)} | ${f3(r.causal.loss)} | ${f3(r.causal.perModality.text)} | ${f3(r.causal.perModality.image)} | +${f3(d('all'))} | +${f3(d('text'))} | +${f3(d('image'))} |`);
  }
  for (const r of results) {
    lines.push('', `## ${r.preset}, aux LR ${r.auxLr}: routers on held-out rows (${r.auxSteps} steps, ${r.auxSeconds.toFixed(0)} s)`, '',
      '| layer | router | modality | BCE | accuracy | precision | recall | selected | predicted |', '|---|---|---|---|---|---|---|---|---|');
    for (const m of r.routers) {
      lines.push(`| ${m.layer} | ${m.kind === 'depth' ? 'MoD' : `experts g${m.group}`} | ${m.modality} | ${f3(m.bce)} | ${pct(m.accuracy)} | ${pct(m.precision)} | ${pct(m.recall)} | ${pct(m.selected)} | ${pct(m.predicted)} |`);
    }
  }
  return lines.join('\n') + '\n';
}

main().catch((err) => {
  console.error(err);
  process.exitCode = 1;
});
