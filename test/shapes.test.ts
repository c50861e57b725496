// Captioned shapes (lib/data/shapes.ts): exact rendering (colours, cells, sizes, rings, no
// overlap, every shape × size distinct), captions that state every attribute (parsed back for
// 1000 documents), determinism by (seed, k, split), the attribute distribution and bad input.
import {
  BACKGROUND, captionOf, COLOUR_NAMES, COLOURS, CAPTION_FIRST_TEMPLATES, describeDocument, IMAGE_FIRST_TEMPLATES, POSITIONS,
  PositionName, renderScene, sampleScene, Scene, SHAPE_KINDS, shapeGeometry, shapeRadii, ShapeSpec, SIZES,
} from '../lib/data/shapes';
import { throwsCode } from './support/errors';

const pixel = (img: Uint8Array, n: number, x: number, y: number): number[] => Array.from(img.subarray(3 * (y * n + x), 3 * (y * n + x) + 3));
const one = (s: Partial<ShapeSpec>): Scene => ({ shapes: [{ shape: 'circle', colour: 'red', size: 'large', position: 'top left', ...s }] });

/** Painted (non-background) pixels of an image. */
function painted(img: Uint8Array, n: number): { x: number; y: number }[] {
  const out: { x: number; y: number }[] = [];
  for (let y = 0; y < n; y++) for (let x = 0; x < n; x++) if (pixel(img, n, x, y).join() !== BACKGROUND.join()) out.push({ x, y });
  return out;
}

describe('renderScene', () => {
  test('a large red circle in the top left: red centre, background corners, exact size', () => {
    const img = renderScene(one({}), 32);
    expect(img.length).toBe(32 * 32 * 3);
    expect(shapeGeometry('top left', 'large', 32)).toEqual({ cx: 5, cy: 5, radius: 4 });
    expect(pixel(img, 32, 5, 5)).toEqual([...COLOURS.red]);
    expect(pixel(img, 32, 1, 5)).toEqual([...COLOURS.red]); // left tip of a radius-4 disc
    for (const [x, y] of [[0, 0], [31, 0], [0, 31], [31, 31], [16, 16]]) expect(pixel(img, 32, x!, y!)).toEqual([...BACKGROUND]);
    // d² <= r(r+1) = 20 over offsets in [-4, 4]²: 9·9 minus 4 corners of 3 pixels each.
    expect(painted(img, 32).length).toBe(81 - 12);
  });

  test("a ring's centre is background and its rim is its colour; every shape is symmetric about its centre", () => {
    for (const n of [28, 32, 48, 64]) {
      for (const size of SIZES) {
        const { cx, cy, radius } = shapeGeometry('centre', size, n);
        const ring = renderScene(one({ shape: 'ring', colour: 'blue', size, position: 'centre' }), n);
        expect(pixel(ring, n, cx, cy)).toEqual([...BACKGROUND]);
        expect(pixel(ring, n, cx + radius, cy)).toEqual([...COLOURS.blue]);
        expect(pixel(ring, n, cx, cy - radius)).toEqual([...COLOURS.blue]);
        for (const shape of SHAPE_KINDS) {
          const img = renderScene(one({ shape, size, position: 'centre' }), n);
          for (const { x, y } of painted(img, n)) expect(pixel(img, n, 2 * cx - x, y)).toEqual([...COLOURS.red]);
          if (shape !== 'triangle') for (const { x, y } of painted(img, n)) expect(pixel(img, n, x, 2 * cy - y)).toEqual([...COLOURS.red]);
        }
      }
    }
  });

  test('every painted pixel has the exact shape colour, and no colour is the background', () => {
    for (const colour of COLOUR_NAMES) {
      expect([...COLOURS[colour]]).not.toEqual([...BACKGROUND]);
      const img = renderScene(one({ colour, shape: 'triangle', position: 'bottom' }), 32);
      const pixels = painted(img, 32);
      expect(pixels.length).toBeGreaterThan(0);
      for (const { x, y } of pixels) expect(pixel(img, 32, x, y)).toEqual([...COLOURS[colour]]);
    }
  });

  test('sizes grow in pixel area: small < medium < large for every shape and image size', () => {
    for (const n of [28, 32, 33, 40, 64, 100]) {
      const r = shapeRadii(n);
      expect(r.small).toBeGreaterThanOrEqual(2);
      expect(r.small).toBeLessThan(r.medium);
      expect(r.medium).toBeLessThan(r.large);
      for (const shape of SHAPE_KINDS) {
        const areas = SIZES.map((size) => painted(renderScene(one({ shape, size, position: 'right' }), n), n).length);
        expect(areas[0]).toBeLessThan(areas[1]!);
        expect(areas[1]).toBeLessThan(areas[2]!);
      }
    }
    expect(shapeRadii(32)).toEqual({ small: 2, medium: 3, large: 4 });
    expect(shapeRadii(64)).toEqual({ small: 5, medium: 8, large: 10 });
  });

  test("position moves the centroid to its cell; a shape's pixels stay inside its cell", () => {
    for (const n of [28, 32, 37, 64]) {
      POSITIONS.forEach((position, cell) => {
        for (const shape of SHAPE_KINDS) {
          const pixels = painted(renderScene(one({ shape, position }), n), n);
          const mean = (key: 'x' | 'y'): number => pixels.reduce((a, p) => a + p[key] + 0.5, 0) / pixels.length;
          expect(Math.floor((mean('x') * 3) / n)).toBe(cell % 3);
          expect(Math.floor((mean('y') * 3) / n)).toBe(Math.floor(cell / 3));
          for (const { x, y } of pixels) {
            expect(Math.floor(((x + 0.5) * 3) / n)).toBe(cell % 3);
            expect(Math.floor(((y + 0.5) * 3) / n)).toBe(Math.floor(cell / 3));
          }
        }
      });
    }
  });

  test('two shapes in any two cells never overlap (large squares, the widest shape)', () => {
    for (const n of [28, 32, 33, 64]) {
      const area = painted(renderScene(one({ shape: 'square', position: 'centre' }), n), n).length;
      for (const a of POSITIONS) for (const b of POSITIONS) {
        if (a === b) continue;
        const scene: Scene = { shapes: [{ shape: 'square', colour: 'red', size: 'large', position: a }, { shape: 'square', colour: 'blue', size: 'large', position: b }] };
        const img = renderScene(scene, n);
        const pixels = painted(img, n);
        expect(pixels.length).toBe(2 * area);
        expect(pixels.filter(({ x, y }) => pixel(img, n, x, y).join() === COLOURS.blue.join()).length).toBe(area);
      }
    }
  });

  test('all 18 shape × size images differ at every position, for every image size 28…72', () => {
    for (let n = 28; n <= 72; n++) {
      for (const position of POSITIONS) {
        const seen = new Set<string>();
        for (const shape of SHAPE_KINDS) for (const size of SIZES) seen.add(Buffer.from(renderScene(one({ shape, size, position }), n)).toString('base64'));
        expect(seen.size).toBe(SHAPE_KINDS.length * SIZES.length);
      }
    }
  });

  test('rejects bad scenes and image sizes', () => {
    for (const n of [27, 513, 32.5, NaN, -32]) throwsCode(() => renderScene(one({}), n), 'ERR_ARG');
    throwsCode(() => renderScene({ shapes: [] }, 32), 'ERR_ARG');
    throwsCode(() => renderScene({ shapes: [one({}).shapes[0]!, one({ position: 'top' }).shapes[0]!, one({ position: 'left' }).shapes[0]!] }, 32), 'ERR_ARG');
    throwsCode(() => renderScene({ shapes: [one({}).shapes[0]!, one({ colour: 'blue' }).shapes[0]!] }, 32), 'ERR_ARG');
    throwsCode(() => renderScene(one({ colour: 'grey' as never }), 32), 'ERR_ARG');
    throwsCode(() => renderScene(one({ shape: 'star' as never }), 32), 'ERR_ARG');
    throwsCode(() => renderScene(one({ size: 'huge' as never }), 32), 'ERR_ARG');
    throwsCode(() => renderScene(one({ position: 'middle' as never }), 32), 'ERR_ARG');
    throwsCode(() => renderScene(null as never, 32), 'ERR_ARG');
    throwsCode(() => renderScene({ shapes: [null] } as never, 32), 'ERR_ARG');
    throwsCode(() => shapeGeometry('nowhere' as never, 'small', 32), 'ERR_ARG');
    throwsCode(() => shapeGeometry('top', 'tiny' as never, 32), 'ERR_ARG');
  });
});

const WORD = (xs: readonly string[]): string => `(${xs.join('|')})`;
const PREPOSITION: Record<string, PositionName> = Object.fromEntries(POSITIONS.map((p) => [
  p === 'top' || p === 'bottom' ? `at the ${p}` : p === 'left' || p === 'right' ? `on the ${p}` : `in the ${p}`, p,
]));
const PHRASE = `a ${WORD(SIZES)} ${WORD(COLOUR_NAMES)} ${WORD(SHAPE_KINDS)} ${WORD(Object.keys(PREPOSITION))}`;
const frame = (t: string): string => t.replace('.', '\\.').replace('{}', `${PHRASE}(?: and ${PHRASE})?`);

/** The scene a caption states, and its wording, parsed back with regular expressions. */
function parseCaption(caption: string): { scene: Scene; captionFirst: boolean; template: number } | null {
  for (const [captionFirst, templates] of [[true, CAPTION_FIRST_TEMPLATES], [false, IMAGE_FIRST_TEMPLATES]] as const) {
    for (let template = 0; template < templates.length; template++) {
      const m = new RegExp(`^${frame(templates[template]!)}$`).exec(caption);
      if (m === null) continue;
      const shapes: ShapeSpec[] = [];
      for (let i = 1; i < m.length && m[i] !== undefined; i += 4) {
        shapes.push({ size: m[i], colour: m[i + 1], shape: m[i + 2], position: PREPOSITION[m[i + 3]!] } as ShapeSpec);
      }
      return { scene: { shapes }, captionFirst, template };
    }
  }
  return null;
}

describe('captions and documents', () => {
  test('every caption states every attribute: 1000 documents parse back to their scene', () => {
    for (let k = 0; k < 1000; k++) {
      const doc = describeDocument(k, 7);
      const parsed = parseCaption(doc.caption);
      expect(parsed).not.toBeNull();
      expect(parsed).toEqual({ scene: doc.scene, captionFirst: doc.captionFirst, template: doc.template });
      expect(sampleScene(k, 7)).toEqual(doc.scene);
    }
  });

  test('captionOf wordings', () => {
    const scene: Scene = { shapes: [{ shape: 'square', colour: 'blue', size: 'small', position: 'bottom' }, { shape: 'ring', colour: 'yellow', size: 'medium', position: 'left' }] };
    expect(captionOf(one({}))).toBe('a large red circle in the top left.');
    expect(captionOf(scene, true, 1)).toBe('this image shows a small blue square at the bottom and a medium yellow ring on the left.');
    expect(captionOf(scene, false, 0)).toBe('above: a small blue square at the bottom and a medium yellow ring on the left.');
    expect(captionOf(one({ position: 'centre', shape: 'cross', colour: 'white' }), false, 2)).toBe('caption: a large white cross in the centre.');
    for (const t of [-1, 4, 1.5]) throwsCode(() => captionOf(scene, true, t), 'ERR_RANGE');
    throwsCode(() => captionOf(scene, false, 3), 'ERR_RANGE');
    throwsCode(() => captionOf({ shapes: [] }), 'ERR_ARG');
  });

  test('deterministic by (seed, k, split); seeds and splits give different streams', () => {
    const stream = (seed: number, split: 'train' | 'eval'): string[] => Array.from({ length: 200 }, (_, k) => JSON.stringify(describeDocument(k, seed, split)));
    expect(stream(3, 'train')).toEqual(stream(3, 'train'));
    expect(describeDocument(150, 3)).toEqual(JSON.parse(stream(3, 'train')[150]!));
    const pairs: [string[], string[]][] = [
      [stream(3, 'train'), stream(3, 'eval')], [stream(3, 'train'), stream(4, 'train')], [stream(0, 'train'), stream(-1, 'train')],
      [stream(Number.MAX_SAFE_INTEGER, 'train'), stream(Number.MAX_SAFE_INTEGER - 1, 'train')], [stream(0, 'train'), stream(2 ** 32, 'train')],
    ];
    for (const [a, b] of pairs) {
      // Independent streams agree only by chance (same scene, order and wording: well under 5%).
      expect(a.filter((doc, k) => doc === b[k]).length).toBeLessThan(10);
    }
    expect(describeDocument(2 ** 40, 1).caption).toMatch(/\.$/);
  });

  test('distribution over 2000 documents: every attribute appears, about half caption-first, about half two shapes', () => {
    const count = new Map<string, number>();
    const bump = (key: string): void => void count.set(key, (count.get(key) ?? 0) + 1);
    let captionFirst = 0;
    let twoShapes = 0;
    for (let k = 0; k < 2000; k++) {
      const doc = describeDocument(k, 11);
      if (doc.captionFirst) captionFirst++;
      if (doc.scene.shapes.length === 2) twoShapes++;
      bump(`${doc.captionFirst}:${doc.template}`);
      for (const s of doc.scene.shapes) for (const v of [s.shape, s.colour, s.size, s.position]) bump(v);
    }
    // Binomial(2000, 1/2): sd 22, so ±100 is 4.5 sd.
    expect(Math.abs(captionFirst - 1000)).toBeLessThan(100);
    expect(Math.abs(twoShapes - 1000)).toBeLessThan(100);
    const shapes = 2000 + twoShapes;
    const near = (values: readonly string[]): void => {
      for (const v of values) expect(Math.abs(count.get(v)! / shapes - 1 / values.length)).toBeLessThan(0.25 / values.length);
    };
    near(SHAPE_KINDS);
    near(COLOUR_NAMES);
    near(SIZES);
    near(POSITIONS);
    CAPTION_FIRST_TEMPLATES.forEach((_, t) => expect(count.get(`true:${t}`)).toBeGreaterThan(150));
    IMAGE_FIRST_TEMPLATES.forEach((_, t) => expect(count.get(`false:${t}`)).toBeGreaterThan(200));
  });

  test('two-shape scenes use two distinct cells', () => {
    for (let k = 0; k < 500; k++) {
      const { shapes } = sampleScene(k, 5, 'eval');
      if (shapes.length === 2) expect(shapes[0]!.position).not.toBe(shapes[1]!.position);
    }
  });

  test('rejects bad seeds, indexes and splits', () => {
    for (const seed of [1.5, NaN, Infinity, 2 ** 53]) throwsCode(() => describeDocument(0, seed), 'ERR_ARG');
    for (const k of [-1, 0.5, NaN, 2 ** 53]) throwsCode(() => describeDocument(k, 0), 'ERR_RANGE');
    throwsCode(() => sampleScene(0, 0, 'test' as never), 'ERR_ARG');
    throwsCode(() => sampleScene(0, '1' as never), 'ERR_ARG');
  });
});
