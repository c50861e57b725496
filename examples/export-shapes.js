// Writes N documents of the built-in captioned-shapes data as real files: PNG images plus a
// JSON Lines file of documents, the input format of `moma data pack`. Use it to try the whole
// data pipeline on files:
//   node examples/export-shapes.js data/shapes 2000
//   npx moma tokenizer train-image data/shapes/images --out data/image_tokenizer.safetensors
//   npx moma data pack data/shapes/docs.jsonl --image-tokenizer data/image_tokenizer.safetensors --out data/shapes-shards
//   npx moma train --data data/shapes-shards
const fs = require('fs');
const path = require('path');
const sharp = require('sharp');
const moma = require('..');

async function main(out = 'data/shapes', count = '2000', size = '64') {
  const n = Number(count);
  const imageSize = Number(size);
  fs.mkdirSync(path.join(out, 'images'), { recursive: true });
  const lines = [];
  for (let k = 0; k < n; k++) {
    const doc = moma.describeDocument(k, 0);
    const file = `images/${String(k).padStart(6, '0')}.png`;
    const pixels = moma.renderScene(doc.scene, imageSize);
    await sharp(Buffer.from(pixels), { raw: { width: imageSize, height: imageSize, channels: 3 } }).png().toFile(path.join(out, file));
    const text = { text: doc.caption };
    const image = { image: file };
    lines.push(JSON.stringify(doc.captionFirst ? [text, image] : [image, text]));
  }
  fs.writeFileSync(path.join(out, 'docs.jsonl'), lines.join('\n') + '\n');
  console.log(`wrote ${n} documents to ${path.join(out, 'docs.jsonl')} and ${n} PNG files (${imageSize}×${imageSize}) to ${path.join(out, 'images')}`);
}

main(...process.argv.slice(2)).catch((e) => {
  console.error(e instanceof Error ? e.message : e);
  process.exitCode = 1;
});
