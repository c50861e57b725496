/**
 * The README cannot rot: every ```ts block in README.md type-checks with the TypeScript compiler
 * under `strict`, as a user's own ES module (top-level await) that imports 'moma', here mapped to
 * the library's sources (lib/index.ts, lib/kernels.ts). Each block stands alone. The README cites
 * no SPEC.md (it is not in the repository) and says that examples/ needs a clone; the error
 * block's output comment is what the library prints.
 */
import * as fs from 'fs';
import * as path from 'path';
import * as ts from 'typescript';
import * as moma from '../lib';

const root = path.join(__dirname, '..');
const readme = fs.readFileSync(path.join(root, 'README.md'), 'utf8');

/** The ```ts blocks of a Markdown text with the line each starts on (its first code line). */
function tsBlocks(markdown: string): { line: number; code: string }[] {
  const blocks: { line: number; code: string }[] = [];
  for (const m of markdown.matchAll(/^```ts\n([\s\S]*?)^```$/gm)) {
    blocks.push({ line: markdown.slice(0, m.index).split('\n').length + 1, code: m[1]! });
  }
  return blocks;
}

const blocks = tsBlocks(readme);
const blockFile = (line: number): string => path.join(root, `README.md.line-${line}.ts`);

/** A block with a type error, checked along with the README's: the check can fail. */
const wrong = { line: 0, code: "import * as moma from 'moma';\nconst n: number = moma.zeros([2]);\n" };

/** Type errors of each block, by block file, from one program over all of them. */
function typeErrors(checked: { line: number; code: string }[]): Map<string, string[]> {
  const options: ts.CompilerOptions = {
    strict: true,
    target: ts.ScriptTarget.ES2022,
    module: ts.ModuleKind.ESNext,
    moduleResolution: ts.ModuleResolutionKind.Bundler,
    lib: ['lib.es2022.d.ts', 'lib.esnext.disposable.d.ts'],
    types: ['node'],
    esModuleInterop: true,
    skipLibCheck: true,
    noEmit: true,
    baseUrl: root,
    paths: { moma: ['lib/index.ts'], 'moma/kernels': ['lib/kernels.ts'] },
  };
  const files = new Map(checked.map((b) => [blockFile(b.line), b.code]));
  const host = ts.createCompilerHost(options);
  const { getSourceFile, fileExists, readFile } = host;
  host.getSourceFile = (name, version, onError, shouldCreate) => {
    const code = files.get(path.resolve(name));
    return code !== undefined ? ts.createSourceFile(name, code, version, true) : getSourceFile.call(host, name, version, onError, shouldCreate);
  };
  host.fileExists = (name) => files.has(path.resolve(name)) || fileExists.call(host, name);
  host.readFile = (name) => files.get(path.resolve(name)) ?? readFile.call(host, name);
  const program = ts.createProgram([...files.keys()], options, host);
  expect(program.getSourceFile(path.join(root, 'lib', 'index.ts'))).toBeDefined();
  const errors = new Map<string, string[]>([...files.keys()].map((f) => [f, []]));
  for (const d of ts.getPreEmitDiagnostics(program)) {
    const file = d.file === undefined ? undefined : path.resolve(d.file.fileName);
    if (file === undefined || !errors.has(file)) continue;  // the library itself is type-checked by the build
    const { line, character } = d.file!.getLineAndCharacterOfPosition(d.start ?? 0);
    errors.get(file)!.push(`${line + 1}:${character + 1} ${ts.flattenDiagnosticMessageText(d.messageText, '\n')}`);
  }
  return errors;
}

let errors: Map<string, string[]>;
beforeAll(() => {
  errors = typeErrors([...blocks, wrong]);
}, 300_000);

test('README.md has its TypeScript blocks (Quick start, errors, training, the Trainer, the MoMa layer)', () => {
  expect(blocks.length).toBeGreaterThanOrEqual(5);
  for (const b of blocks) expect(b.code).toMatch(/^import \* as moma from 'moma';$/m);
  expect(blocks.some((b) => /catch \(e\)[\s\S]*instanceof moma\.MomaError/.test(b.code))).toBe(true);
});

test('the error block prints what the README says it prints', () => {
  const block = blocks.find((b) => b.code.includes('instanceof moma.MomaError'))!;
  const said = /^\s*\/\/ (ERR_\w+ .*)$/m.exec(block.code)![1];
  let printed = '';
  try {
    moma.zeros([2, 3]).matmul(moma.zeros([2, 3]));
  } catch (e) {
    if (!(e instanceof moma.MomaError)) throw e;
    printed = `${e.code} ${e.message}`;
  }
  expect(printed).toBe(said);
});

test.each(blocks.map((b) => [b.line, b] as const))('the ts block at README.md line %i type-checks under strict', (_line, block) => {
  expect(errors.get(blockFile(block.line))).toEqual([]);
});

test('a block with a type error is caught (the check can fail)', () => {
  expect(tsBlocks(`\`\`\`ts\n${wrong.code}\`\`\`\n`)).toEqual([{ line: 2, code: wrong.code }]);
  expect(errors.get(blockFile(wrong.line))).toEqual([expect.stringMatching(/^2:7 Type 'Tensor' is not assignable to type 'number'/)]);
});

test('README.md cites no SPEC.md, and says that the examples need a clone of the repository', () => {
  expect(readme.split('\n').filter((line) => /\bSPEC\b/.test(line))).toEqual([]);
  for (const m of readme.matchAll(/examples\/[\w.-]+\.js/g)) expect(fs.existsSync(path.join(root, m[0]))).toBe(true);
  expect(readme).toMatch(/examples\/[^\n]*(are|is) not in the npm package/);
});
