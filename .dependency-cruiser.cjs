/**
 * The import graph of lib/, checked by dependency-cruiser (test/import_graph.test.ts runs it in
 * `npm test`; by hand: `npx depcruise lib --config .dependency-cruiser.cjs`).
 *
 * Rules:
 *   - no circular imports anywhere in lib/ (type-only imports count: a type cycle is a design cycle);
 *   - layers: every file of lib/ belongs to exactly one layer below, and imports only from its own
 *     layer or the layers listed before it (never "upward");
 *   - lib/ never imports from test/, bench/, examples/, scripts/ or dist/.
 * docs/ARCHITECTURE.md ("Layers of lib/") describes each layer.
 */

/** Bottom to top. `path`: regular expressions over paths from the repository root (disjoint). */
const LAYERS = [
  { name: 'core', path: ['^lib/(errors|checked|options|native_tables|formulas|binding|dtype|device|random|tensor|memory|inspect|cuda_probe)\\.ts$', '^lib/types/'] },
  { name: 'distributed', path: ['^lib/distributed/'] },
  { name: 'ops', path: ['^lib/(ops|creation|kernels)\\.ts$', '^lib/nn/ops\\.ts$', '^lib/moe/ops\\.ts$'] },
  { name: 'io', path: ['^lib/io/'] },
  { name: 'data', path: ['^lib/data/'] },
  { name: 'autograd', path: ['^lib/autograd/', '^lib/nn/(?!ops\\.ts$)'] },
  { name: 'moe', path: ['^lib/moe/(?!ops\\.ts$)'] },
  { name: 'model', path: ['^lib/model/'] },
  { name: 'optim', path: ['^lib/optim/'] },
  { name: 'train', path: ['^lib/train/'] },
  { name: 'generate', path: ['^lib/generate/'] },
  { name: 'run', path: ['^lib/run/'] },
  { name: 'experiment', path: ['^lib/experiment/'] },
  { name: 'cli', path: ['^lib/cli/'] },
  { name: 'index', path: ['^lib/index\\.ts$'] },
];

const IN_A_LAYER = LAYERS.flatMap((layer) => layer.path);

const upward = LAYERS.slice(0, -1).map((layer, i) => ({
  name: `no-upward-from-${layer.name}`,
  comment: `lib/ layer '${layer.name}' imports only from itself and the layers below it (${LAYERS.slice(0, i).map((l) => l.name).join(', ') || 'none'})`,
  severity: 'error',
  from: { path: layer.path },
  to: { path: LAYERS.slice(i + 1).flatMap((l) => l.path) },
}));

module.exports = {
  forbidden: [
    {
      name: 'no-circular',
      comment: 'lib/ has no import cycles, type-only imports included',
      severity: 'error',
      from: { path: '^lib/' },
      to: { circular: true },
    },
    ...upward,
    {
      name: 'no-layer-importer',
      comment: 'every file of lib/ belongs to a layer of .dependency-cruiser.cjs: add the new file or folder to LAYERS',
      severity: 'error',
      from: { path: '^lib/', pathNot: IN_A_LAYER },
      to: { path: '^lib/' },
    },
    {
      name: 'no-layer-imported',
      comment: 'every file of lib/ belongs to a layer of .dependency-cruiser.cjs: add the new file or folder to LAYERS',
      severity: 'error',
      from: { path: '^lib/' },
      to: { path: '^lib/', pathNot: IN_A_LAYER },
    },
    {
      name: 'no-outside-lib',
      comment: 'the library imports nothing from tests, benches, examples, scripts or build output',
      severity: 'error',
      from: { path: '^lib/' },
      to: { path: '^(test|bench|examples|scripts|dist)/' },
    },
    {
      name: 'not-to-unresolvable',
      comment: 'every relative import of lib/ resolves to a file',
      severity: 'error',
      from: { path: '^lib/' },
      to: { couldNotResolve: true, dependencyTypes: ['local'] },
    },
  ],
  options: {
    doNotFollow: { path: 'node_modules' },
    tsPreCompilationDeps: true,
    tsConfig: { fileName: 'tsconfig.json' },
    enhancedResolveOptions: { extensions: ['.ts', '.d.ts', '.js', '.json'] },
  },
};
