/**
 * Captioned shapes: the scenes behind the built-in dataset (lib/data/builtin.ts).
 *
 * A scene is 1 or 2 shapes, each with a kind (6), a colour (8 named), a size (small / medium /
 * large) and a cell of a 3×3 grid; two shapes always sit in different cells. Rendering is exact
 * integer geometry on a fixed grey background (no named colour is grey): a shape is centred on
 * the pixel nearest its cell's centre, its radius is a whole number of pixels (shapeRadii) and a
 * pixel at integer offset (dx, dy) from the centre is painted when the offset is inside the shape,
 * so every shape is symmetric and (2r+1) pixels wide. A shape never leaves its cell, so two
 * shapes never overlap.
 *
 * A caption states every attribute of every shape, in the shapes' order, framed by one of a few
 * wordings. A document puts the caption before the image (to learn text → image) or after it
 * (image → text, framed as "above: …"), about half each.
 *
 * Everything is keyed: document k of (seed, split) is drawn from SeededRandom(seed, split tag, k)
 * (lib/data/seeded_random.ts), a pure function of its arguments, so a store can read any
 * document in any order.
 */
import { MomaError } from '../errors';
import type { Split } from './dataset';
import { SeededRandom } from './seeded_random';

export const SHAPE_KINDS = ['circle', 'square', 'triangle', 'diamond', 'cross', 'ring'] as const;
export const SIZES = ['small', 'medium', 'large'] as const;
/** Grid cells in reading order: index = 3 · row + column. */
export const POSITIONS = ['top left', 'top', 'top right', 'left', 'centre', 'right', 'bottom left', 'bottom', 'bottom right'] as const;
export const COLOURS = {
  red: [220, 30, 30],
  green: [30, 160, 60],
  blue: [40, 80, 220],
  yellow: [245, 215, 40],
  purple: [140, 60, 180],
  orange: [245, 135, 25],
  white: [255, 255, 255],
  black: [15, 15, 15],
} as const satisfies Record<string, readonly [number, number, number]>;
/** The background of every image: mid grey, far from every named colour. */
export const BACKGROUND: readonly [number, number, number] = [128, 128, 128];

export type ShapeKind = (typeof SHAPE_KINDS)[number];
export type SizeName = (typeof SIZES)[number];
export type PositionName = (typeof POSITIONS)[number];
export type ColourName = keyof typeof COLOURS;
export const COLOUR_NAMES = Object.keys(COLOURS) as ColourName[];

export interface ShapeSpec {
  shape: ShapeKind;
  colour: ColourName;
  size: SizeName;
  position: PositionName;
}

export interface Scene {
  /** One or two shapes in distinct cells; captions list them in this order. */
  shapes: ShapeSpec[];
}

/** Wordings of a caption that precedes its image; `{}` is the shape list. */
export const CAPTION_FIRST_TEMPLATES = ['{}.', 'this image shows {}.', 'a picture of {}.', 'draw {}.'] as const;
/** Wordings of a caption that follows its image. */
export const IMAGE_FIRST_TEMPLATES = ['above: {}.', 'the image above shows {}.', 'caption: {}.'] as const;

export interface DocumentSpec {
  scene: Scene;
  /** Caption then image (true) or image then caption (false). */
  captionFirst: boolean;
  /** Index into CAPTION_FIRST_TEMPLATES or IMAGE_FIRST_TEMPLATES. */
  template: number;
  caption: string;
}

/** The smallest image whose three sizes are distinct radii of at least 2 pixels. */
export const MIN_IMAGE_SIZE = 28;
export const MAX_IMAGE_SIZE = 512;

// ---------------------------------------------------------------------------------------------
// Keyed randomness

const SPLIT_TAG: Record<Split, number> = { train: 0x7261696e, eval: 0x6576616c };

function checkSeedAndIndex(where: string, seed: number, k: number): void {
  if (!Number.isSafeInteger(seed)) throw new MomaError('ERR_ARG', `${where}: seed must be a safe integer, got ${String(seed)}`);
  if (!Number.isSafeInteger(k) || k < 0) throw new MomaError('ERR_RANGE', `${where}: document index must be a safe integer >= 0, got ${String(k)}`);
}

function rngFor(where: string, seed: number, k: number, split: Split): SeededRandom {
  checkSeedAndIndex(where, seed, k);
  if (split !== 'train' && split !== 'eval') throw new MomaError('ERR_ARG', `${where}: split must be 'train' or 'eval', got ${JSON.stringify(split)}`);
  return new SeededRandom(seed, SPLIT_TAG[split], k);
}

// ---------------------------------------------------------------------------------------------
// Scenes

function drawScene(rng: SeededRandom): Scene {
  const count = 1 + rng.below(2);
  const firstCell = rng.below(POSITIONS.length);
  const cells = [firstCell];
  if (count === 2) cells.push((firstCell + 1 + rng.below(POSITIONS.length - 1)) % POSITIONS.length);
  return {
    shapes: cells.map((cell) => ({
      shape: SHAPE_KINDS[rng.below(SHAPE_KINDS.length)]!,
      colour: COLOUR_NAMES[rng.below(COLOUR_NAMES.length)]!,
      size: SIZES[rng.below(SIZES.length)]!,
      position: POSITIONS[cell]!,
    })),
  };
}

/** Scene k of the stream (seed, split): a pure function of its arguments. */
export function sampleScene(k: number, seed: number, split: Split = 'train'): Scene {
  return drawScene(rngFor('sampleScene', seed, k, split));
}

/** Document k of the stream (seed, split): its scene, order, wording and caption. */
export function describeDocument(k: number, seed: number, split: Split = 'train'): DocumentSpec {
  const rng = rngFor('describeDocument', seed, k, split);
  const scene = drawScene(rng);
  const captionFirst = rng.below(2) === 0;
  const template = rng.below(captionFirst ? CAPTION_FIRST_TEMPLATES.length : IMAGE_FIRST_TEMPLATES.length);
  return { scene, captionFirst, template, caption: captionOf(scene, captionFirst, template) };
}

/** Checks a scene's fields (names, one or two shapes, distinct cells); `where` prefixes errors. */
export function checkScene(scene: Scene, where: string): void {
  if (scene === null || typeof scene !== 'object' || !Array.isArray(scene.shapes)) {
    throw new MomaError('ERR_ARG', `${where}: scene must be an object with a 'shapes' array`);
  }
  if (scene.shapes.length < 1 || scene.shapes.length > 2) throw new MomaError('ERR_ARG', `${where}: a scene has 1 or 2 shapes, got ${scene.shapes.length}`);
  scene.shapes.forEach((s, i) => {
    const bad = (key: string, allowed: readonly string[]): never => {
      throw new MomaError('ERR_ARG', `${where}: shapes[${i}].${key} is ${JSON.stringify((s as unknown as Record<string, unknown>)?.[key])}, expected one of ${allowed.join(', ')}`);
    };
    if (s === null || typeof s !== 'object') throw new MomaError('ERR_ARG', `${where}: shapes[${i}] must be an object`);
    if (!SHAPE_KINDS.includes(s.shape)) bad('shape', SHAPE_KINDS);
    if (!COLOUR_NAMES.includes(s.colour)) bad('colour', COLOUR_NAMES);
    if (!SIZES.includes(s.size)) bad('size', SIZES);
    if (!POSITIONS.includes(s.position)) bad('position', POSITIONS);
  });
  if (scene.shapes.length === 2 && scene.shapes[0]!.position === scene.shapes[1]!.position) {
    throw new MomaError('ERR_ARG', `${where}: both shapes are in the cell '${scene.shapes[0]!.position}'; shapes must be in distinct cells`);
  }
}

// ---------------------------------------------------------------------------------------------
// Rendering

export function checkImageSize(imageSize: number, where: string): void {
  if (!Number.isInteger(imageSize) || imageSize < MIN_IMAGE_SIZE || imageSize > MAX_IMAGE_SIZE) {
    throw new MomaError('ERR_ARG', `${where}: imageSize must be an integer in [${MIN_IMAGE_SIZE}, ${MAX_IMAGE_SIZE}], got ${String(imageSize)}`);
  }
}

/** Whether the pixel offset (dx, dy) from a shape's centre pixel is inside a shape of radius r. */
function inside(shape: ShapeKind, dx: number, dy: number, r: number): boolean {
  const ax = Math.abs(dx);
  const ay = Math.abs(dy);
  const d2 = dx * dx + dy * dy;
  switch (shape) {
    case 'circle':
      // r(r+1) rather than r²: a rounder disc on a small grid (no lone pixel at the four tips).
      return d2 <= r * (r + 1);
    case 'ring': {
      const hole = Math.floor(r / 2);
      return d2 <= r * (r + 1) && d2 > hole * (hole + 1);
    }
    case 'square':
      return ax <= r && ay <= r;
    case 'diamond':
      return ax + ay <= r;
    case 'triangle':
      // Apex at (0, -r), base from (-r, r) to (r, r).
      return dy <= r && 2 * ax <= dy + r;
    case 'cross': {
      const arm = Math.floor(r / 3);
      return (ax <= arm && ay <= r) || (ay <= arm && ax <= r);
    }
  }
}

/**
 * The radius (pixels) of every size for an image of `imageSize`: the largest that keeps a shape's
 * pixels inside its cell, and about 3/4 and 1/2 of it, all distinct.
 */
export function shapeRadii(imageSize: number): Record<SizeName, number> {
  checkImageSize(imageSize, 'shapeRadii');
  const halfCell = imageSize / 6;
  // The centre pixel's centre is at most 0.5 from the cell's centre.
  const large = Math.ceil(halfCell - 0.5) - 1;
  const small = Math.max(2, Math.round(large / 2));
  const medium = Math.max(small + 1, Math.round((3 * large) / 4));
  return { small, medium, large };
}

/** The centre pixel of a grid cell and the radius of a size, in pixels, for an image of `imageSize`. */
export function shapeGeometry(position: PositionName, size: SizeName, imageSize: number): { cx: number; cy: number; radius: number } {
  const radius = shapeRadii(imageSize)[size];
  const cell = POSITIONS.indexOf(position);
  if (cell < 0) throw new MomaError('ERR_ARG', `shapeGeometry: unknown position ${JSON.stringify(position)}`);
  if (radius === undefined) throw new MomaError('ERR_ARG', `shapeGeometry: unknown size ${JSON.stringify(size)}`);
  const centre = (index: number): number => Math.floor(((2 * index + 1) * imageSize) / 6);
  return { cx: centre(cell % 3), cy: centre(Math.floor(cell / 3)), radius };
}

/** The scene as imageSize × imageSize RGB bytes (row-major, 3 bytes a pixel). */
export function renderScene(scene: Scene, imageSize = 32): Uint8Array {
  checkScene(scene, 'renderScene');
  checkImageSize(imageSize, 'renderScene');
  const out = new Uint8Array(imageSize * imageSize * 3);
  for (let i = 0; i < imageSize * imageSize; i++) out.set(BACKGROUND, 3 * i);
  for (const s of scene.shapes) {
    const { cx, cy, radius } = shapeGeometry(s.position, s.size, imageSize);
    const colour = COLOURS[s.colour];
    for (let dy = -radius; dy <= radius; dy++) {
      for (let dx = -radius; dx <= radius; dx++) {
        if (inside(s.shape, dx, dy, radius)) out.set(colour, 3 * ((cy + dy) * imageSize + cx + dx));
      }
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Captions

/** "in the top left", "at the top", "on the left", "in the centre", … */
export function positionPhrase(position: PositionName): string {
  if (position === 'top' || position === 'bottom') return `at the ${position}`;
  if (position === 'left' || position === 'right') return `on the ${position}`;
  return `in the ${position}`;
}

/** "a large red circle in the top left" */
export function shapePhrase(s: ShapeSpec): string {
  return `a ${s.size} ${s.colour} ${s.shape} ${positionPhrase(s.position)}`;
}

/** The caption of a scene in one of the wordings of its order. */
export function captionOf(scene: Scene, captionFirst = true, template = 0): string {
  checkScene(scene, 'captionOf');
  const templates: readonly string[] = captionFirst ? CAPTION_FIRST_TEMPLATES : IMAGE_FIRST_TEMPLATES;
  if (!Number.isInteger(template) || template < 0 || template >= templates.length) {
    throw new MomaError('ERR_RANGE', `captionOf: template must be an integer in [0, ${templates.length}), got ${String(template)}`);
  }
  return templates[template]!.replace('{}', scene.shapes.map(shapePhrase).join(' and '));
}
