#!/usr/bin/env node
// Causal-inference report (issue 7, SPEC §4): for MoMa 4t4i and 4t4i+MoD on the built-in data,
// train the main model (moma train defaults), train the auxiliary routers (moma train-aux, at
// each learning rate given), then compare the held-out loss in causal mode (aux routers) with
// training mode (batch top-k), list each router's accuracy, precision and recall, and generate:
// images for single-shape captions of eval-split scenes (is the drawn shape's colour / grid cell
// the caption's? chance 1/8 and 1/9) and captions for their rendered images (does the caption
// name the right colour, shape and position?), with tokens/s.
//
//   node bench/causal.js [--presets tiny-4t4i,tiny-4t4i-mod] [--steps 1000] [--aux-steps 1000]
//                        [--aux-lr 1e-4,1e-3] [--runs DIR] [--out bench/results]
//
// Runs already in --runs (<runs>/<preset>) are reused; --aux-steps 0 evaluates the routers already trained. Writes <out>/<date>-<cpu|cuda>-causal.{json,md}.
'use strict';
const fs = require('fs');
const os = require('os');
const path = require('path');

const root = path.resolve(__dirname, '..');
const moma = require(path.join(root, 'dist'));
const { trainRun } = require(path.join(root, 'dist/run/run'));
const { trainAuxRouters } = require(path.join(root, 'dist/run/aux_train'));
const { evaluateCausal } = require(path.join(root, 'dist/train/causal_eval'));
const { openCheckpoint, loadModel, loadAuxRouters, openStageData, stageHeldOut } = require(path.join(root, 'dist/run/checkpoint_source'));
const { vocabFromSpec } = require(path.join(root, 'dist/data/vocab'));
const shapes = require(path.join(root, 'dist/data/shapes'));

const GENERATIONS = 48;

/** Single-shape scenes of the eval split (the first GENERATIONS of stream seed 0). */
function evalScenes() {
  const scenes = [];
  for (let k = 0; scenes.length < GENERATIONS; k++) {
    const scene = shapes.sampleScene(k, 0, 'eval');
    if (scene.shapes.length === 1) scenes.push(scene);
  }
  return scenes;
}

/** Colour (nearest named colour of the mean foreground pixel) and grid cell (of the foreground centroid) of an image. */
function readShape(rgb, size) {
  let n = 0;
  const sum = [0, 0, 0];
  let sx = 0;
  let sy = 0;
  for (let i = 0; i < size * size; i++) {
    const px = [rgb[3 * i], rgb[3 * i + 1], rgb[3 * i + 2]];
    if (Math.hypot(...px.map((v, c) => v - shapes.BACKGROUND[c])) < 48) continue;
    n++;
    px.forEach((v, c) => (sum[c] += v));
    sx += i % size;
    sy += Math.floor(i / size);
  }
  if (n === 0) return { colour: null, position: null };
  const mean = sum.map((v) => v / n);
  const colour = shapes.COLOUR_NAMES.reduce((best, name) => (Math.hypot(...shapes.COLOURS[name].map((v, c) => v - mean[c])) < Math.hypot(...shapes.COLOURS[best].map((v, c) => v - mean[c])) ? name : best));
  const cell = (v) => Math.min(2, Math.floor((3 * v) / size));
  return { colour, position: shapes.POSITIONS[3 * cell(sy / n) + cell(sx / n)] };
}

/** Caption → image and image → caption on eval-split scenes: faithfulness and tokens/s. */
async function generationCheck(model, routers, source) {
  const L = source.layout;
  const image = moma.ImageTokenizer.load(path.join(source.dir, L.image.tokenizer.file));
  const text = new moma.ByteTokenizer();
  const toImage = { colour: 0, position: 0, both: 0, tokens: 0, seconds: 0 };
  const toText = { colour: 0, shape: 0, position: 0, all: 0, tokens: 0, seconds: 0 };
  for (const [i, scene] of evalScenes().entries()) {
    const s = scene.shapes[0];
    const g = await moma.captionToImage(model, shapes.captionOf(scene, true, 0), { routing: routers, layout: L, text, image, seed: i });
    const drawn = readShape(image.decodePixels(g.codes), image.imageSize);
    toImage.colour += drawn.colour === s.colour ? 1 : 0;
    toImage.position += drawn.position === s.position ? 1 : 0;
    toImage.both += drawn.colour === s.colour && drawn.position === s.position ? 1 : 0;
    toImage.tokens += g.tokens.length;
    toImage.seconds += g.decodeSeconds;
    const c = await moma.imageToCaption(model, image.encodePixels(shapes.renderScene(scene, image.imageSize)), { routing: routers, layout: L, text, temperature: 0 });
    const says = (words) => c.caption.includes(words);
    const ok = [says(` ${s.colour} `), says(` ${s.shape} `), says(shapes.positionPhrase(s.position))];
    toText.colour += ok[0] ? 1 : 0;
    toText.shape += ok[1] ? 1 : 0;
    toText.position += ok[2] ? 1 : 0;
    toText.all += ok.every(Boolean) ? 1 : 0;
    toText.tokens += c.tokens.length;
    toText.seconds += c.decodeSeconds;
  }
  const share = (o, keys) => Object.fromEntries(keys.map((k) => [k, o[k] / GENERATIONS]));
  return {
    samples: GENERATIONS,
    captionToImage: { ...share(toImage, ['colour', 'position', 'both']), tokensPerSecond: toImage.tokens / toImage.seconds },
    imageToCaption: { ...share(toText, ['colour', 'shape', 'position', 'all']), tokensPerSecond: toText.tokens / toText.seconds },
  };
}

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
const signed = (x) => `${x < 0 ? '−' : '+'}${Math.abs(x).toFixed(3)}`;
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
    for (const lr of o.auxSteps > 0 ? o.auxLr : [null]) {
      const source = openCheckpoint(runDir, 'bench');
      // --aux-steps 0: evaluate the routers already in the checkpoint
      const summary = lr === null ? JSON.parse(fs.readFileSync(path.join(source.dir, 'aux_routers.json'), 'utf8'))
        : await trainAuxRouters({ checkpoint: runDir, steps: o.auxSteps, lr, lrEnd: lr / 100, device });
      const model = loadModel(source, device);
      const aux = loadAuxRouters(source.dir, model, 'bench');
      const heldOut = stageHeldOut(await openStageData(source, 'bench'));
      const r = await evaluateCausal(model, heldOut, { aux, vocab: vocabFromSpec(source.layout), batchSize: 8 });
      const generation = await generationCheck(model, aux, source);
      aux.dispose();
      model.dispose();
      console.error(`${preset} aux lr ${summary.settings.lr}: ${summary.steps} steps in ${summary.seconds.toFixed(0)} s; loss training ${f3(r.training.loss)} causal ${f3(r.causal.loss)}; generation ${JSON.stringify(generation)}`);
      results.push({ preset, checkpoint: path.relative(root, source.dir), auxLr: summary.settings.lr, auxSteps: summary.steps, auxSeconds: summary.seconds, training: r.training, causal: r.causal, routers: r.routers, generation });
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
    const d = (k) => signed(k === 'all' ? r.causal.loss - r.training.loss : r.causal.perModality[k] - r.training.perModality[k]);
    lines.push(`| ${r.preset} | ${r.auxLr} | ${f3(r.training.loss)} | ${f3(r.training.perModality.text)} | ${f3(r.training.perModality.image)} | ${f3(r.causal.loss)} | ${f3(r.causal.perModality.text)} | ${f3(r.causal.perModality.image)} | ${d('all')} | ${d('text')} | ${d('image')} |`);
  }
  const gap = (r) => r.causal.loss - r.training.loss;
  const lrs = [...new Set(results.map((r) => r.auxLr))];
  lines.push('', 'Sensitivity to router errors (causal − training, overall): ' + lrs.map((lr) => {
    const at = results.filter((r) => r.auxLr === lr);
    const [plain, mod] = [at.find((r) => !r.preset.endsWith('-mod')), at.find((r) => r.preset.endsWith('-mod'))];
    const ratio = plain && mod && Math.abs(gap(plain)) > 1e-3 ? ` (${(gap(mod) / gap(plain)).toFixed(1)}×)` : '';
    return `aux LR ${lr}: ${at.map((r) => `${r.preset} ${signed(gap(r))}`).join(', ')}${ratio}`;
  }).join('; ') + '.');
  lines.push('', `## Generation in causal mode (KV cache), ${GENERATIONS} single-shape captions of eval-split scenes`, '',
    'Caption → image: temperature 1, one sample per caption; the drawn shape\'s colour (nearest named colour of the mean foreground pixel) and grid cell (of the foreground centroid) against the caption (chance 12.5% and 11.1%). Image → caption: greedy, from the rendered scene; the caption names the colour, the shape, the position.', '',
    '| model | aux LR | image: colour | cell | both | tokens/s | caption: colour | shape | position | all three | tokens/s |', '|---|---|---|---|---|---|---|---|---|---|---|');
  for (const r of results) {
    const a = r.generation.captionToImage;
    const b = r.generation.imageToCaption;
    lines.push(`| ${r.preset} | ${r.auxLr} | ${pct(a.colour)} | ${pct(a.position)} | ${pct(a.both)} | ${a.tokensPerSecond.toFixed(0)} | ${pct(b.colour)} | ${pct(b.shape)} | ${pct(b.position)} | ${pct(b.all)} | ${b.tokensPerSecond.toFixed(0)} |`);
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

if (require.main === module) {
  main().catch((err) => {
    console.error(err);
    process.exitCode = 1;
  });
}

module.exports = { markdown };
