#!/usr/bin/env node
// A grid of images generated in causal mode from captions (the picture in the README):
//   node examples/generate-grid.js [--checkpoint DIR] [--out grid.png] [--seed N] [--scale N] caption…
// Each column: the caption's rendering by the built-in shapes renderer when the caption is one of
// its single-shape captions ("a large red circle at the top."), above the model's sample.
'use strict';
const path = require('path');
const sharp = require('sharp');
const moma = require('../dist');
const shapes = require('../dist/data/shapes');

function parseArgs(argv) {
  const o = { checkpoint: undefined, out: 'grid.png', seed: 0, scale: 4, captions: [] };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--checkpoint') o.checkpoint = argv[++i];
    else if (a === '--out') o.out = argv[++i];
    else if (a === '--seed') o.seed = Number(argv[++i]);
    else if (a === '--scale') o.scale = Number(argv[++i]);
    else o.captions.push(a);
  }
  if (o.captions.length === 0) throw new Error('give at least one caption');
  return o;
}

/** The scene a single-shape caption "a SIZE COLOUR SHAPE POSITION." describes, or null. */
function sceneOf(caption) {
  for (const size of shapes.SIZES) for (const colour of shapes.COLOUR_NAMES) for (const shape of shapes.SHAPE_KINDS) {
    for (const position of shapes.POSITIONS) {
      const scene = { shapes: [{ shape, colour, size, position }] };
      if (shapes.captionOf(scene, true, 0) === caption) return scene;
    }
  }
  return null;
}

async function main() {
  const o = parseArgs(process.argv.slice(2));
  const source = moma.openCheckpoint(o.checkpoint, 'generate-grid');
  const model = moma.loadModel(source);
  const aux = moma.loadAuxRouters(source.dir, model, 'generate-grid');
  const image = moma.ImageTokenizer.load(path.join(source.dir, source.layout.image.tokenizer.file));
  const text = moma.loadTextTokenizer(source.layout.text.tokenizer, source.dir);
  const side = image.imageSize * o.scale;
  const gap = 8;
  const tiles = [];
  for (const [i, caption] of o.captions.entries()) {
    const scene = sceneOf(caption);
    if (scene !== null) {
      const truth = await sharp(Buffer.from(shapes.renderScene(scene, image.imageSize)), { raw: { width: image.imageSize, height: image.imageSize, channels: 3 } })
        .resize(side, side, { kernel: 'nearest' }).png().toBuffer();
      tiles.push({ input: truth, left: i * (side + gap), top: 0 });
    }
    const g = await moma.captionToImage(model, caption, { routing: aux, layout: source.layout, text, image, seed: o.seed + i, scale: o.scale });
    tiles.push({ input: g.png, left: i * (side + gap), top: side + gap });
    console.log(`${caption} → ${g.tokens.length} tokens, ${g.tokensPerSecond.toFixed(0)} tokens/s`);
  }
  await sharp({ create: { width: o.captions.length * (side + gap) - gap, height: 2 * side + gap, channels: 3, background: 'white' } })
    .composite(tiles).png().toFile(o.out);
  console.log(`wrote ${o.out}`);
  aux.dispose();
  model.dispose();
}

main().catch((err) => {
  console.error(err);
  process.exitCode = 1;
});
