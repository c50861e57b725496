/** `moma inspect`: what loaded and what it sees, as text and as JSON. */
import { buildProgram } from '../lib/cli/main';
import { native } from '../lib/binding';
import type { InspectReport } from '../lib';

async function run(args: string[]): Promise<string> {
  const lines: string[] = [];
  const spy = jest.spyOn(console, 'log').mockImplementation((...parts: unknown[]) => {
    lines.push(parts.join(' '));
  });
  try {
    await buildProgram().exitOverride().parseAsync(['node', 'moma', ...args]);
  } finally {
    spy.mockRestore();
  }
  return lines.join('\n');
}

test('inspect --json reports the binary, backends, CUDA versions, devices and CPU', async () => {
  const report = JSON.parse(await run(['inspect', '--json'])) as InspectReport;
  const info = native().info();
  expect(report.version).toBe(require('../package.json').version);
  expect(report.binary.kind).toMatch(/^(source|prebuilt)$/);
  expect(report.binary.path).toMatch(/moma(\.napi)?\.node$/);
  expect(report.backends).toEqual(info.cuda.compiled ? ['cpu', 'cuda'] : ['cpu']);
  expect(report.cuda.compiled).toBe(info.cuda.compiled);
  if (info.cuda.compiled) expect(report.cuda.runtimeVersion).toMatch(/^\d+\.\d+$/);
  expect(report.cuda.devices.map((d) => d.name)).toEqual(info.cuda.devices.map((d) => d.name));
  expect(report.cpu.threads).toBeGreaterThanOrEqual(1);
  expect(report.cpu.gemmKernel).toMatch(/^(avx512|avx2|generic)$/);
});

test('inspect prints a readable summary that says when no GPU is visible', async () => {
  const text = await run(['inspect']);
  expect(text).toMatch(/^moma \d+\.\d+\.\d+ \(node v\d+/);
  expect(text).toMatch(/binary: +(source|prebuilt) — .*moma(\.napi)?\.node/);
  if (native().info().cuda.devices.length === 0) expect(text).toContain('no CUDA device visible');
  else expect(text).toMatch(/cuda:0 +.+ GiB, sm_\d+/);
});
