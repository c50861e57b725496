/** `moma inspect`: what loaded and what it sees, as text and as JSON; how reportError ends each kind of error. */
import * as fs from 'fs';
import { Command, CommanderError } from 'commander';
import { buildProgram, reportError } from '../lib/cli/main';
import { native } from '../lib/binding';
import { MomaError, type InspectReport } from '../lib';

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

test('the help of every command says what it does without citing a SPEC.md that is not in the package', () => {
  const helps: string[] = [];
  const visit = (command: Command): void => {
    helps.push(command.helpInformation().replace(/\s+/g, ' '));  // help wraps long lines
    command.commands.forEach(visit);
  };
  visit(buildProgram());
  expect(helps.length).toBeGreaterThan(20);
  expect(helps.filter((h) => /\bSPEC\b/.test(h))).toEqual([]);
  expect(helps.find((h) => h.startsWith('Usage: moma experiment flops-savings'))).toContain('the training FLOPs the dense model needs to reach a variant');
});

/** What reportError writes to stderr and the exit code it sets, for one error. */
function reported(err: unknown): { lines: string[]; exitCode: typeof process.exitCode } {
  const lines: string[] = [];
  const spy = jest.spyOn(console, 'error').mockImplementation((...parts: unknown[]) => {
    lines.push(...parts.join(' ').split('\n'));
  });
  const before = process.exitCode;
  try {
    reportError(err);
    return { lines, exitCode: process.exitCode };
  } finally {
    process.exitCode = before;
    spy.mockRestore();
  }
}

test('reportError: one line moma: ERR_…: message and exit code 1 for every kind of error; help and --version exit 0 silently', () => {
  expect(reported(new MomaError('ERR_SHAPE', 'matmul: inner dimensions differ'))).toEqual({ lines: ['moma: ERR_SHAPE: matmul: inner dimensions differ'], exitCode: 1 });
  expect(reported(new CommanderError(1, 'commander.unknownOption', "error: unknown option '--x'"))).toEqual({ lines: ["moma: ERR_ARG: unknown option '--x'"], exitCode: 1 });
  expect(reported(new CommanderError(1, 'commander.help', '(outputHelp)'))).toEqual({ lines: ['moma: ERR_ARG: no command given (see the help above)'], exitCode: 1 });
  for (const code of ['commander.helpDisplayed', 'commander.version']) expect(reported(new CommanderError(0, code, '0.1.0'))).toEqual({ lines: [], exitCode: undefined });
  let missing: unknown;
  try {
    fs.readFileSync('/nonexistent/moma-file');
  } catch (err) {
    missing = err;
  }
  expect(reported(missing)).toEqual({ lines: ["moma: ERR_FILE: ENOENT: no such file or directory, open '/nonexistent/moma-file'"], exitCode: 1 });
  const bug = reported(new TypeError('x is not a function\nsecond line'));
  expect(bug.exitCode).toBe(1);
  expect(bug.lines[0]).toBe('moma: ERR_INTERNAL: x is not a function second line (a bug in moma: please report it with the lines below)');
  expect(bug.lines[1]).toBe('TypeError: x is not a function');
  expect(reported('a string thrown').lines[0]).toBe('moma: ERR_INTERNAL: a string thrown (a bug in moma: please report it with the lines below)');
});
