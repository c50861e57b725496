/**
 * The emoji images of a real mixed-modal corpus (lib/data/corpus/build.ts), from two npm packages
 * installed into a sources folder (`npm install --prefix <sources> emoji-datasource-google@16
 * emojibase-data@17`):
 *
 *   - emoji-datasource-<set> (iamcal/emoji-data): emoji.json, one entry per emoji with its Unicode
 *     name, short_names, category, subcategory, image file name, has_img_<set> and
 *     skin_variations; the PNGs are img/<set>/64/<image> (64×64, transparent background).
 *   - emojibase-data: en/data.json, one entry per emoji with a CLDR label, tags and skin-tone
 *     variants (`skins`), each keyed by its hexcode.
 *
 * The two are joined by codepoint sequence (uppercase hex joined by '-', compared without the
 * FE0F variation selector, which the packages write differently). Every emoji and every skin-tone
 * variant with an image of the set becomes one EmojiImage; `emoji` (the base emoji's codepoints)
 * groups a base emoji with its variants, so the held-out split can keep them together.
 */
import * as fs from 'fs';
import * as path from 'path';
import { describeValue } from '../../checked';
import { MomaError } from '../../errors';
import { readJson } from '../../io/files';

export const EMOJI_DATA_PACKAGE = 'emojibase-data';
export const EMOJI_DATA_MAJOR = 17;
export const EMOJI_IMAGES_MAJOR = 16;
/** The image sets emoji-datasource ships, and the licence of each set's images (from the package README). */
export const EMOJI_IMAGE_SETS: Readonly<Record<string, string>> = {
  google: 'Apache-2.0 (Noto Emoji)',
  twitter: 'CC-BY-4.0 (Twemoji graphics)',
  apple: 'Copyright Apple Inc., not licensed for commercial use',
  facebook: 'Copyright Facebook, Inc., no clear licence',
};

/** One image of the corpus: an emoji or a skin-tone variant. */
export interface EmojiImage {
  /** The base emoji's codepoints (uppercase hex joined by '-'): the unit of the held-out split. */
  emoji: string;
  /** This image's codepoints. */
  codepoints: string;
  /** The PNG in the installed package. */
  file: string;
  caption: string;
}

/** What an installed npm package says about itself. */
export interface NpmPackageInfo {
  name: string;
  version: string;
  license: string;
  folder: string;
}

/** The emoji images of a sources folder, in emoji-datasource's sort order (variants after their emoji). */
export interface EmojiSource {
  images: EmojiImage[];
  packages: NpmPackageInfo[];
  /** The image set's licence (EMOJI_IMAGE_SETS). */
  imagesLicense: string;
  /** Emoji whose set has no image (has_img_<set> false), left out. */
  withoutImage: number;
}

/** The npm package name of an image set. */
export function emojiImagesPackage(set: string): string {
  return `emoji-datasource-${set}`;
}

/** The npm command that installs the emoji packages into `sources` (what `--install` runs). */
export function emojiInstallCommand(sources: string, set: string): string[] {
  return ['npm', 'install', '--prefix', sources, `${emojiImagesPackage(set)}@${EMOJI_IMAGES_MAJOR}`, `${EMOJI_DATA_PACKAGE}@${EMOJI_DATA_MAJOR}`];
}

/** Name, version and licence from an installed package's package.json. */
export function readNpmPackage(sources: string, name: string): NpmPackageInfo {
  const folder = path.join(sources, 'node_modules', name);
  const file = path.join(folder, 'package.json');
  if (!fs.existsSync(file)) {
    throw new MomaError('ERR_FILE', `corpus: ${file} is missing: the package ${name} is not installed in ${sources} (run moma data corpus --install, or npm install --prefix ${sources} ${name})`);
  }
  const json = readJson(file, 'corpus');
  const record = json !== null && typeof json === 'object' && !Array.isArray(json) ? (json as Record<string, unknown>) : {};
  const { version, license } = record;
  if (record.name !== name || typeof version !== 'string' || typeof license !== 'string') {
    throw new MomaError('ERR_FILE', `corpus: ${file}: expected the package.json of ${name} with string "version" and "license"`);
  }
  return { name, version, license, folder };
}

/** Codepoints compared without the FE0F variation selector. */
function joinKey(codepoints: string): string {
  return codepoints.toUpperCase().split('-').filter((cp) => cp !== 'FE0F').join('-');
}

interface LabelEntry {
  label: string;
  tags: string[];
}

function fail(file: string, where: string, problem: string): never {
  throw new MomaError('ERR_FILE', `corpus: ${file}: ${where} ${problem}`);
}

function stringField(file: string, where: string, entry: Record<string, unknown>, key: string): string {
  const value = entry[key];
  if (typeof value !== 'string') fail(file, where, `"${key}" must be a string, got ${describeValue(value)}`);
  return value;
}

function stringList(file: string, where: string, entry: Record<string, unknown>, key: string): string[] {
  const value = entry[key];
  if (value === undefined) return [];
  if (!Array.isArray(value) || value.some((v) => typeof v !== 'string')) fail(file, where, `"${key}" must be a list of strings, got ${describeValue(value)}`);
  return value as string[];
}

function objectList(file: string, json: unknown): Record<string, unknown>[] {
  if (!Array.isArray(json)) throw new MomaError('ERR_FILE', `corpus: ${file}: expected a JSON array of emoji entries, got ${describeValue(json)}`);
  json.forEach((entry: unknown, i) => {
    if (entry === null || typeof entry !== 'object' || Array.isArray(entry)) fail(file, `entry ${i}`, `must be an object, got ${describeValue(entry)}`);
  });
  return json as Record<string, unknown>[];
}

/** emojibase-data's en/data.json: label and tags by join key, skin-tone variants included (they carry no tags of their own). */
function readLabels(file: string): Map<string, LabelEntry> {
  const labels = new Map<string, LabelEntry>();
  objectList(file, readJson(file, 'corpus')).forEach((entry, i) => {
    const where = `entry ${i}`;
    const tags = stringList(file, where, entry, 'tags');
    labels.set(joinKey(stringField(file, where, entry, 'hexcode')), { label: stringField(file, where, entry, 'label'), tags });
    const skins = entry.skins ?? [];
    objectList(file, skins).forEach((skin, s) => {
      const at = `${where} skin ${s}`;
      labels.set(joinKey(stringField(file, at, skin, 'hexcode')), { label: stringField(file, at, skin, 'label'), tags });
    });
  });
  return labels;
}

const words = (text: string): string => text.replace(/[_-]+/g, ' ').trim();

/**
 * The caption of an image: label, the Unicode name where it says something else, the tags and
 * short names, the category and subcategory. Lower case except the tags' own spelling, e.g.
 * `thumbs up: medium skin tone. thumbs up sign. tags: +1, good, hand, like, thumb, up, yes, thumbsup. category: people & body, hand fingers closed.`
 */
export function emojiCaption(parts: { label: string; name: string; tags: string[]; shortNames: string[]; category: string; subcategory: string }): string {
  const label = parts.label.trim();
  const name = parts.name.toLowerCase().trim();
  const tags = [...new Set([...parts.tags, ...parts.shortNames.map(words)].map((t) => t.trim()))].filter((t) => t !== '' && t !== label && t !== name);
  const sentences = [`${label}.`];
  if (name !== '' && name !== label.toLowerCase() && !label.toLowerCase().startsWith(`${name}:`)) sentences.push(`${name}.`);
  if (tags.length > 0) sentences.push(`tags: ${tags.join(', ')}.`);
  sentences.push(`category: ${parts.category.toLowerCase()}, ${words(parts.subcategory)}.`);
  return sentences.join(' ');
}

/** Reads the installed emoji packages of `sources` for image set `set`. */
export function readEmojiSource(sources: string, set: string): EmojiSource {
  if (!(set in EMOJI_IMAGE_SETS)) throw new MomaError('ERR_ARG', `corpus: emoji set must be one of ${Object.keys(EMOJI_IMAGE_SETS).join(', ')}, got ${JSON.stringify(set)}`);
  if (!fs.existsSync(sources) || !fs.statSync(sources).isDirectory()) throw new MomaError('ERR_FILE', `corpus: the sources folder ${sources} does not exist`);
  const imagesPackage = readNpmPackage(sources, emojiImagesPackage(set));
  const dataPackage = readNpmPackage(sources, EMOJI_DATA_PACKAGE);
  const labels = readLabels(path.join(dataPackage.folder, 'en', 'data.json'));
  const emojiFile = path.join(imagesPackage.folder, 'emoji.json');
  const entries = objectList(emojiFile, readJson(emojiFile, 'corpus'));
  const imageDir = path.join(imagesPackage.folder, 'img', set, '64');
  const flag = `has_img_${set}`;

  const sorted = entries.map((entry, i) => {
    const order = entry.sort_order;
    if (!Number.isSafeInteger(order)) fail(emojiFile, `entry ${i}`, `"sort_order" must be an integer, got ${describeValue(order)}`);
    return { entry, i, order: order as number };
  }).sort((a, b) => a.order - b.order || a.i - b.i);

  const images: EmojiImage[] = [];
  let withoutImage = 0;
  for (const { entry, i } of sorted) {
    const where = `entry ${i}`;
    const base = {
      name: stringField(emojiFile, where, entry, 'name'),
      shortNames: stringList(emojiFile, where, entry, 'short_names'),
      category: stringField(emojiFile, where, entry, 'category'),
      subcategory: stringField(emojiFile, where, entry, 'subcategory'),
    };
    const emoji = stringField(emojiFile, where, entry, 'unified').toUpperCase();
    const variants: [Record<string, unknown>, string][] = [[entry, where]];
    const skins = entry.skin_variations ?? {};
    if (skins === null || typeof skins !== 'object' || Array.isArray(skins)) fail(emojiFile, where, `"skin_variations" must be an object, got ${describeValue(skins)}`);
    for (const [tone, variant] of Object.entries(skins as Record<string, unknown>).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) {
      if (variant === null || typeof variant !== 'object' || Array.isArray(variant)) fail(emojiFile, `${where} skin ${tone}`, `must be an object, got ${describeValue(variant)}`);
      variants.push([variant as Record<string, unknown>, `${where} skin ${tone}`]);
    }
    for (const [variant, at] of variants) {
      if (variant[flag] !== true) {
        withoutImage++;
        continue;
      }
      const codepoints = stringField(emojiFile, at, variant, 'unified').toUpperCase();
      const file = path.join(imageDir, stringField(emojiFile, at, variant, 'image'));
      if (!fs.existsSync(file)) throw new MomaError('ERR_FILE', `corpus: ${emojiFile}: ${at} names the image ${file}, which does not exist`);
      const known = labels.get(joinKey(codepoints));
      const caption = emojiCaption({ ...base, label: known?.label ?? base.name.toLowerCase(), tags: known?.tags ?? [] });
      images.push({ emoji, codepoints, file, caption });
    }
  }
  return { images, packages: [imagesPackage, dataPackage], imagesLicense: EMOJI_IMAGE_SETS[set] as string, withoutImage };
}
