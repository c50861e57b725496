// `buildCorpus` / `moma data corpus` on a tiny slice of the real packages, in their real formats
// (test/fixtures/corpus/): emoji-datasource-google (emoji.json with a skin-tone variant, an emoji
// without a Google image, 64×64 transparent PNGs), emojibase-data (en/data.json, one hexcode
// without FE0F), dict-gcide (dictd index with base64 numbers, a duplicate headword and a
// 00-database entry, gzip'd dictionary), wordnet-base (data.{noun,verb,adj,adv} with licence
// header lines) and both packages' Debian copyright and changelog. The npm packages are copied
// into <tmp>/sources/node_modules (the repository ignores node_modules folders). Asserts the
// exact documents and split, sources.json, the images' pixels, determinism, that `moma data pack`
// accepts the output, and that bad inputs are MomaErrors naming the file.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import sharp from 'sharp';
import { MomaError, MomaErrorCode } from '../lib/errors';
import { runInProcess } from './support/in_process_cli';
import { registerDataCommands } from '../lib/cli/data';
import { buildCorpus, CorpusOptions, CorpusReport, isHeldOut } from '../lib/data/corpus/build';
import { dictdNumber, gcideText } from '../lib/data/corpus/debian';
import { emojiCaption, emojiInstallCommand } from '../lib/data/corpus/emoji';
import { ImageTokenizer } from '../lib/data/image_tokenizer';
import { packShardSet } from '../lib/data/pack';
import { openShardSet } from '../lib/data/shard_set';

const FIXTURES = path.join(__dirname, 'fixtures', 'corpus');
const DEBIAN = path.join(FIXTURES, 'debian');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'moma-corpus-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

/** A sources folder with the fixture packages installed (optionally without some). */
function sources(name: string, without: string[] = []): string {
  const dir = path.join(tmp, name);
  for (const pkg of ['emoji-datasource-google', 'emojibase-data']) {
    if (!without.includes(pkg)) fs.cpSync(path.join(FIXTURES, 'npm', pkg), path.join(dir, 'node_modules', pkg), { recursive: true });
  }
  fs.mkdirSync(dir, { recursive: true });
  return dir;
}

let outs = 0;
const freshOut = (): string => path.join(tmp, `out-${outs++}`);
const lines = (file: string): unknown[] => fs.readFileSync(file, 'utf8').trimEnd().split('\n').map((l) => JSON.parse(l));

async function rejects(promise: Promise<unknown>, code: MomaErrorCode, message: RegExp): Promise<void> {
  const err = await promise.then(() => null, (e: unknown) => e);
  expect(err).toBeInstanceOf(MomaError);
  expect((err as MomaError).code).toBe(code);
  expect((err as MomaError).message).toMatch(message);
}

const GRIN = 'grinning face. tags: face, grin, happy, smile, grinning. category: smileys & emotion, face smiling.';
const HEART = 'red heart. heavy black heart. tags: heart, love. category: smileys & emotion, heart.';
const THUMBS = 'thumbs up. thumbs up sign. tags: +1, good, hand, like, thumb, up, yes, thumbsup. category: people & body, hand fingers closed.';
const THUMBS_MEDIUM = 'thumbs up: medium skin tone. thumbs up sign. tags: +1, good, hand, like, thumb, up, yes, thumbsup. category: people & body, hand fingers closed.';
const CAT = 'cat. tags: cat2. category: animals & nature, animal mammal.';
const pair = (caption: string, image: string): unknown[] => [[{ text: caption }, { image: `images/${image}.png` }], [{ image: `images/${image}.png` }, { text: caption }]];
const GCIDE = [
  'Cat \\Cat\\, v. t. [imp. & p. p. Catted; p. pr. & vb. n. Catting.] (Naut.) To bring to the cathead; as, to cat an anchor. See Anchor. --Totten.',
  'Kitten \\Kit"ten\\, n. A young cat.',
  'Zebra \\Ze"bra\\, n. (Zool.) Any member of three species of wild horses of Africa, striped with black or dark brown on a white ground.',
];
const WORDNET = [
  'cat, true cat (noun): feline mammal usually having thick soft fur and no ability to roar: domestic cats; wildcats',
  'zebra (noun): any of several fleet black-and-white striped African equines',
  "cat (verb): beat with a cat-o'-nine-tails",
  'handy, ready to hand (adjective): easy to reach; "found a handy spot for the can opener"',
  'barely (adverb): only a very short time before; "they could barely hear"',
];

describe('buildCorpus on the fixture packages', () => {
  let report: CorpusReport;
  let out: string;
  const options = (): CorpusOptions => ({ sources: sources('installed'), out: freshOut(), debianRoot: DEBIAN, heldout: 0.5, seed: 1 });

  beforeAll(async () => {
    const o = options();
    out = o.out;
    report = await buildCorpus(o);
  });

  test('the exact documents of each split, in stable order', () => {
    // seed 1, heldout 0.5: grinning face and red heart train; thumbs up (with its variant) and cat are held out
    expect(lines(path.join(out, 'train.jsonl'))).toEqual([...pair(GRIN, '1f600'), ...pair(HEART, '2764-fe0f'), { text: WORDNET[1] }]);
    expect(lines(path.join(out, 'heldout.jsonl'))).toEqual([
      ...pair(THUMBS, '1f44d'), ...pair(THUMBS_MEDIUM, '1f44d-1f3fd'), ...pair(CAT, '1f408'),
      ...GCIDE.map((text) => ({ text })), { text: WORDNET[0] }, ...WORDNET.slice(2).map((text) => ({ text })),
    ]);
    expect(fs.readdirSync(path.join(out, 'images')).sort()).toEqual(['1f408.png', '1f44d-1f3fd.png', '1f44d.png', '1f600.png', '2764-fe0f.png']);
  });

  test('the split is the seeded hash of the base emoji: an emoji and its variants never straddle it', () => {
    const split = (emoji: string): boolean => isHeldOut(1, `emoji:${emoji}`, 0.5);
    expect(['1F600', '2764-FE0F', '1F44D', '1F408'].map(split)).toEqual([false, false, true, true]);
    expect(['1F600', '2764-FE0F', '1F44D', '1F408'].map((e) => isHeldOut(4, `emoji:${e}`, 0.5))).toEqual([true, false, false, false]);
    expect(isHeldOut(1, 'emoji:1F600', 0)).toBe(false);
    const images = (file: string): Set<string> => new Set(fs.readFileSync(path.join(out, file), 'utf8').match(/images\/[0-9a-f]+/g)!.map((m) => m.slice(7).split('-')[0]!));
    const train = images('train.jsonl');
    for (const emoji of images('heldout.jsonl')) expect(train.has(emoji)).toBe(false);
  });

  test('sources.json: packages, versions, licences, counts and options', () => {
    const manifest = JSON.parse(fs.readFileSync(path.join(out, 'sources.json'), 'utf8'));
    expect(manifest).toEqual(report.manifest);
    expect(manifest).toEqual({
      format: 'moma-corpus', version: 1,
      options: { emojiSet: 'google', imageSize: 32, heldout: 0.5, seed: 1, text: ['gcide', 'wordnet'], maxTextDocuments: null, imageBackground: 'white' },
      sources: [
        { kind: 'npm', name: 'emoji-datasource-google', version: '16.0.0', license: 'MIT', licenseFile: 'node_modules/emoji-datasource-google/package.json', provides: 'emoji images (img/google/64), names, short names, categories', imagesLicense: 'Apache-2.0 (Noto Emoji)' },
        { kind: 'npm', name: 'emojibase-data', version: '17.0.0', license: 'MIT', licenseFile: 'node_modules/emojibase-data/package.json', provides: 'emoji labels and tags (en/data.json)' },
        { kind: 'debian', name: 'dict-gcide', version: '0.48.5+nmu2', license: 'GPL-2.0-or-later', licenseFile: 'usr/share/doc/dict-gcide/copyright', provides: 'dictionary entries (text documents)' },
        { kind: 'debian', name: 'wordnet-base', version: '1:3.0-37', license: 'WordNet3.0', licenseFile: 'usr/share/doc/wordnet-base/copyright', provides: 'synset glosses (text documents)' },
      ],
      files: { train: 'train.jsonl', heldout: 'heldout.jsonl' },
      images: { train: 2, heldout: 3 },
      emoji: { train: 2, heldout: 2 },
      documents: {
        train: { 'text-image': 2, 'image-text': 2, dictionary: 0, gloss: 1 },
        heldout: { 'text-image': 3, 'image-text': 3, dictionary: 3, gloss: 4 },
      },
    });
    expect(report.bytes.train).toBe(fs.statSync(path.join(out, 'train.jsonl')).size);
  });

  test('images are 32×32 RGB, alpha flattened onto white', async () => {
    const { data, info } = await sharp(path.join(out, 'images', '1f600.png')).raw().toBuffer({ resolveWithObject: true });
    expect([info.width, info.height, info.channels]).toEqual([32, 32, 3]);
    expect([...data.subarray(0, 3)]).toEqual([255, 255, 255]); // a transparent corner
    const centre = (16 * 32 + 16) * 3;
    expect([...data.subarray(centre, centre + 3)]).toEqual([0xf7, 0xc6, 0x2f]); // the disc's colour
  });

  test('deterministic: the same options give the same bytes; --image-size 64, --text and --max-text-documents', async () => {
    const again = { ...options(), out: freshOut() };
    await buildCorpus(again);
    for (const file of ['train.jsonl', 'heldout.jsonl', 'sources.json', 'images/1f44d-1f3fd.png']) {
      expect(fs.readFileSync(path.join(again.out, file))).toEqual(fs.readFileSync(path.join(out, file)));
    }
    const big = await buildCorpus({ ...options(), imageSize: 64, text: ['wordnet'], maxTextDocuments: 2, heldout: 0 });
    expect((await sharp(path.join(big.out, 'images', '1f408.png')).metadata()).width).toBe(64);
    expect(big.manifest.documents).toEqual({ train: { 'text-image': 5, 'image-text': 5, dictionary: 0, gloss: 2 }, heldout: { 'text-image': 0, 'image-text': 0, dictionary: 0, gloss: 0 } });
    expect(big.manifest.sources.map((s) => s.name)).toEqual(['emoji-datasource-google', 'emojibase-data', 'wordnet-base']);
    const glosses = lines(path.join(big.out, 'train.jsonl')).slice(10).map((d) => (d as { text: string }).text);
    expect(glosses).toHaveLength(2);
    for (const g of glosses) expect(WORDNET).toContain(g);
    expect(WORDNET.indexOf(glosses[0]!)).toBeLessThan(WORDNET.indexOf(glosses[1]!)); // source order kept
    expect(fs.readFileSync(path.join(big.out, 'heldout.jsonl'), 'utf8')).toBe('');
  });

  test('moma data pack accepts the output, with an image tokenizer trained on its images', async () => {
    const rgb = await Promise.all(fs.readdirSync(path.join(out, 'images')).sort().map((f) => ImageTokenizer.loadImage(path.join(out, 'images', f), 32)));
    const tokenizerFile = path.join(tmp, 'corpus-codebook.safetensors');
    await ImageTokenizer.train(rgb, { imageSize: 32, patchSize: 8, codebookSize: 8, iterations: 5, seed: 0 }).tokenizer.save(tokenizerFile);
    const shards = freshOut();
    // heldout.jsonl is the eval split as it is (--eval-input); sources.json travels with the shards
    const packed = await packShardSet({ inputs: [path.join(out, 'train.jsonl')], evalInputs: [path.join(out, 'heldout.jsonl')], out: shards, imageTokenizer: tokenizerFile });
    expect(packed).toMatchObject({ documents: 5 + 13, images: 4 + 6 });
    expect(packed.splits.train.documents).toBe(5);
    expect(packed.splits.eval.documents).toBe(13);
    expect(fs.readFileSync(path.join(shards, 'sources.json'), 'utf8')).toBe(fs.readFileSync(path.join(out, 'sources.json'), 'utf8'));
    const set = openShardSet(shards);
    try {
      expect(set.summary('train')).toMatchObject({ documents: 5 });
      expect(set.summary('train').imageTokens + set.summary('eval').imageTokens).toBe(10 * 16);
    } finally {
      set.close();
    }
  });
});

describe('the readers, one by one', () => {
  test('dictd base64 numbers, GCIDE cleanup, captions, the install command', () => {
    expect([dictdNumber('A'), dictdNumber('BT'), dictdNumber('U014'), dictdNumber('/'), dictdNumber('a-b'), dictdNumber('')]).toEqual([0, 83, 20 * 64 ** 3 + 52 * 64 ** 2 + 53 * 64 + 56, 63, -1, -1]);
    expect(gcideText('Cat \\Cat\\, n. See {Anchor}.\n   [1913 Webster]\n\n   2. A {boat}. [Obs.]\n   [PJC]\n')).toBe('Cat \\Cat\\, n. See Anchor. 2. A boat. [Obs.]');
    expect(emojiCaption({ label: 'man: red hair', name: 'MAN: RED HAIR', tags: ['man', 'red hair'], shortNames: ['red_haired_man'], category: 'People & Body', subcategory: 'person-gendered' }))
      .toBe('man: red hair. tags: man, red hair, red haired man. category: people & body, person gendered.');
    expect(emojiInstallCommand('data/sources', 'google')).toEqual(['npm', 'install', '--prefix', 'data/sources', 'emoji-datasource-google@16', 'emojibase-data@17']);
  });
});

describe('bad inputs are MomaErrors naming the file', () => {
  const build = (o: Partial<CorpusOptions>): Promise<CorpusReport> => buildCorpus({ sources: sources(`bad-${outs}`), out: freshOut(), debianRoot: DEBIAN, ...o });

  test('a missing package, a malformed emoji.json or data.json, a missing image', async () => {
    await rejects(buildCorpus({ sources: sources('no-images', ['emoji-datasource-google']), out: freshOut(), debianRoot: DEBIAN }), 'ERR_FILE', /node_modules\/emoji-datasource-google\/package\.json is missing: the package emoji-datasource-google is not installed/);
    await rejects(buildCorpus({ sources: sources('no-data', ['emojibase-data']), out: freshOut(), debianRoot: DEBIAN }), 'ERR_FILE', /emojibase-data\/package\.json is missing/);
    await rejects(buildCorpus({ sources: path.join(tmp, 'nowhere'), out: freshOut(), debianRoot: DEBIAN }), 'ERR_FILE', /the sources folder .*nowhere does not exist/);

    const broken = sources('broken-json');
    const emojiJson = path.join(broken, 'node_modules', 'emoji-datasource-google', 'emoji.json');
    fs.writeFileSync(emojiJson, '[{"name": "CAT",');
    await rejects(build({ sources: broken }), 'ERR_FILE', /emoji-datasource-google\/emoji\.json: not valid JSON/);
    fs.writeFileSync(emojiJson, '{"emoji": []}');
    await rejects(build({ sources: broken }), 'ERR_FILE', /emoji\.json: expected a JSON array of emoji entries/);
    fs.writeFileSync(emojiJson, JSON.stringify([{ name: 'CAT', unified: '1F408', image: '1f408.png', short_names: ['cat2'], category: 'Animals & Nature', subcategory: 7, sort_order: 1, has_img_google: true }]));
    await rejects(build({ sources: broken }), 'ERR_FILE', /emoji\.json: entry 0 "subcategory" must be a string/);
    fs.writeFileSync(emojiJson, JSON.stringify([{ name: 'DOG', unified: '1F415', image: '1f415.png', short_names: [], category: 'Animals & Nature', subcategory: 'animal-mammal', sort_order: 1, has_img_google: true }]));
    await rejects(build({ sources: broken }), 'ERR_FILE', /emoji\.json: entry 0 names the image .*img\/google\/64\/1f415\.png, which does not exist/);
    fs.writeFileSync(path.join(broken, 'node_modules', 'emojibase-data', 'en', 'data.json'), '[{"label": "cat", "hexcode": 128008}]');
    await rejects(build({ sources: broken }), 'ERR_FILE', /emojibase-data\/en\/data\.json: entry 0 "hexcode" must be a string/);
  });

  test('missing or malformed Debian files', async () => {
    const root = path.join(tmp, 'debian-partial');
    fs.cpSync(DEBIAN, root, { recursive: true });
    fs.rmSync(path.join(root, 'usr', 'share', 'wordnet', 'data.verb'));
    await rejects(build({ debianRoot: root }), 'ERR_FILE', /wordnet\/data\.verb is missing: install the Debian package with apt-get install wordnet-base/);
    await build({ debianRoot: root, text: ['gcide'] }); // wordnet not asked for: not read
    await rejects(build({ debianRoot: path.join(tmp, 'empty-root') }), 'ERR_FILE', /dictd\/gcide\.index is missing: install the Debian package with apt-get install dict-gcide/);
    fs.appendFileSync(path.join(root, 'usr', 'share', 'dictd', 'gcide.index'), 'zebu\tFA\n');
    await rejects(build({ debianRoot: root, text: ['gcide'] }), 'ERR_FILE', /gcide\.index:6: expected "headword TAB offset TAB length"/);
    fs.appendFileSync(path.join(root, 'usr', 'share', 'dictd', 'gcide.index'), 'zebu\tFA\tZZZ\n');
    fs.writeFileSync(path.join(root, 'usr', 'share', 'dictd', 'gcide.dict.dz'), 'not gzip');
    await rejects(build({ debianRoot: root, text: ['gcide'] }), 'ERR_FILE', /gcide\.dict\.dz is not gzip data/);
    fs.writeFileSync(path.join(root, 'usr', 'share', 'wordnet', 'data.verb'), '01411888 35 v 01 cat\n');
    await rejects(build({ debianRoot: root, text: ['wordnet'] }), 'ERR_FILE', /wordnet\/data\.verb:1: expected a WordNet synset/);
    fs.rmSync(path.join(root, 'usr', 'share', 'wordnet', 'data.verb'));
    fs.cpSync(path.join(DEBIAN, 'usr', 'share', 'wordnet', 'data.verb'), path.join(root, 'usr', 'share', 'wordnet', 'data.verb'));
    fs.writeFileSync(path.join(root, 'usr', 'share', 'doc', 'wordnet-base', 'copyright'), 'no licence here\n');
    await rejects(build({ debianRoot: root, text: ['wordnet'] }), 'ERR_FILE', /wordnet-base\/copyright: names no licence/);
  });

  test('bad options and a refused --out', async () => {
    await rejects(build({ imageSize: 48 }), 'ERR_ARG', /imageSize must be 32 or 64, got 48/);
    await rejects(build({ heldout: 1 }), 'ERR_ARG', /heldout must be a fraction in \[0, 1\), got 1/);
    await rejects(build({ emojiSet: 'noto' }), 'ERR_ARG', /emoji set must be one of google, twitter, apple, facebook/);
    await rejects(build({ text: ['gcide', 'gcide'] }), 'ERR_ARG', /text must be a list of distinct sources/);
    const out = freshOut();
    fs.mkdirSync(out);
    fs.writeFileSync(path.join(out, 'keep.txt'), 'x');
    await rejects(build({ out }), 'ERR_FILE', /is not empty \(pass --force to replace it\)/);
  });
});

describe('moma data corpus (CLI)', () => {
  const cli = (args: string[]): Promise<string> => runInProcess(registerDataCommands, args);

  test('the report, --json, and bad flags', async () => {
    const src = sources('cli');
    const text = await cli(['data', 'corpus', '--sources', src, '--out', freshOut(), '--debian-root', DEBIAN, '--heldout', '0.5', '--seed', '1']);
    expect(text).toMatch(/^corpus .* in [\d.]+ s\n {2}train {3}2 text-image, 2 image-text, 0 dictionary, 1 gloss; 2 images of 2 emoji; train\.jsonl 0\.0 MB\n {2}heldout 3 text-image, 3 image-text, 3 dictionary, 4 gloss; 3 images of 2 emoji/);
    expect(text).toContain('source emoji-datasource-google 16.0.0: MIT; images Apache-2.0 (Noto Emoji)');
    expect(text).toContain('source wordnet-base 1:3.0-37: WordNet3.0');
    const json = JSON.parse(await cli(['data', 'corpus', '--sources', src, '--out', freshOut(), '--debian-root', DEBIAN, '--text', 'none', '--json']));
    expect(json.manifest.documents.train.dictionary + json.manifest.documents.heldout.dictionary).toBe(0);
    expect(json.manifest.images.train + json.manifest.images.heldout).toBe(5);
    await rejects(cli(['data', 'corpus', '--sources', src, '--out', freshOut(), '--heldout', 'half']), 'ERR_ARG', /--heldout must be a fraction in \[0, 1\), got 'half'/);
    await rejects(cli(['data', 'corpus', '--sources', src, '--out', freshOut(), '--text', 'gcide,bible']), 'ERR_ARG', /--text must list sources from gcide, wordnet/);
    await rejects(cli(['data', 'corpus', '--sources', src, '--out', freshOut(), '--emoji-set', 'noto']), 'ERR_ARG', /--emoji-set must be one of/);
  });
});
