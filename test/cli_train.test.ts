/**
 * `moma train` and `moma report` as a user runs them: the built CLI (dist/, rebuilt with tsc when
 * a source is newer) in a child process. A short run, bad flags, Ctrl-C (exit 130, checkpoint,
 * resume command) then --resume, SIGKILL then --resume, and `moma report`.
 */
import type { ChildProcess } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { CliResult, ensureDist, runCli } from './support/cli';

let dir: string;
let config: string;

/** Runs the CLI in the temp working folder. */
const moma = (args: string[], onStdout?: (text: string, child: ChildProcess) => void): Promise<CliResult> => runCli(dir, args, onStdout);

function stepLines(runDir: string): number[] {
  return fs.readFileSync(path.join(dir, runDir, 'metrics.jsonl'), 'utf8').split('\n').filter((l) => l !== '')
    .map((l) => JSON.parse(l) as { step: number; kind?: string }).filter((r) => r.kind === undefined).map((r) => r.step);
}

const SMALL = ['--preset', 'tiny-4t4i', '--batch-size', '2', '--seq-len', '64', '--warmup', '2', '--log-every', '1'];

beforeAll(() => {
  ensureDist();
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'moma-cli-train-'));
  config = path.join(dir, 'small.json');
  fs.writeFileSync(config, JSON.stringify({ model: { dModel: 32, heads: 2, ffn: { dFF: 48 } }, evalBatches: 1 }));
}, 120_000);
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

test('train --steps 20 exits 0, prints progress lines, the losses and where the results are', async () => {
  const r = await moma(['train', '--steps', '20', ...SMALL, '--config', config, '--out', 'short', '--eval-every', '10']);
  expect(r.stderr).toBe('');
  expect(r.code).toBe(0);
  expect(r.stdout).toContain('moma train: training into short — tiny-4t4i');
  expect(r.stdout).toMatch(/^step 1\/20 +loss \d+\.\d{3} \(text \d+\.\d{3}, image \d+\.\d{3}\)/m);
  expect(r.stdout).toMatch(/^step 20\/20 /m);
  expect(r.stdout).toMatch(/^held-out at step 10: loss \d/m);
  expect(r.stdout).toMatch(/done at step 20 in .*: 20 steps, 2\.56 k tokens this session/);
  expect(r.stdout).toMatch(/held-out \(step 20\) +\d+\.\d{3} +\d+\.\d{3} +\d+\.\d{3}/);
  expect(r.stdout).toContain('results in short:');
  expect(r.stdout).toContain(`checkpoint  ${path.join('short', 'checkpoints', 'step-000020')}`);
  expect(stepLines('short')).toHaveLength(20);
  for (const file of ['run.json', 'vocab.json', 'image_tokenizer.safetensors', 'report.html', 'report.svg', 'report.png']) {
    expect(fs.existsSync(path.join(dir, 'short', file))).toBe(true);
  }
});

test('bad flags and config keys exit 1 with the MomaError naming them', async () => {
  const steps = await moma(['train', '--steps', 'ten']);
  expect(steps.code).toBe(1);
  expect(steps.stderr).toMatch(/^moma: ERR_ARG: .*--steps must be an integer/);
  fs.writeFileSync(path.join(dir, 'typo.json'), JSON.stringify({ stepz: 3 }));
  const typo = await moma(['train', '--config', 'typo.json']);
  expect(typo.code).toBe(1);
  expect(typo.stderr).toContain("typo.json has unknown key 'stepz'");
  const resume = await moma(['train', '--resume', 'short', '--lr', '0.1']);
  expect(resume.code).toBe(1);
  expect(resume.stderr).toContain('only --steps, --skip-nonfinite and --expert-parallel may be given, not --lr');
});

test('--dtype bfloat16 trains in bf16, records it in run.json and keeps it on resume', async () => {
  const r = await moma(['train', '--steps', '3', ...SMALL, '--config', config, '--out', 'bf16', '--dtype', 'bfloat16', '--eval-every', '0']);
  expect(r.code).toBe(0);
  expect(r.stdout).toContain(', bfloat16 compute (float32 parameters and optimizer)');
  const run = JSON.parse(fs.readFileSync(path.join(dir, 'bf16', 'run.json'), 'utf8')) as { config: { dtype: string }; model: { computeDtype: string } };
  expect(run.config.dtype).toBe('bfloat16');
  expect(run.model.computeDtype).toBe('bfloat16');
  const resumed = await moma(['train', '--resume', 'bf16', '--steps', '5']);
  expect(resumed.code).toBe(0);
  expect(resumed.stdout).toContain('resuming bf16 from step 3');
  expect(resumed.stdout).toContain(', bfloat16 compute');
  const changed = await moma(['train', '--resume', 'bf16', '--dtype', 'float32']);
  expect(changed.code).toBe(1);
  expect(changed.stderr).toContain('may be given, not --dtype');
});

test('Ctrl-C stops after the step, checkpoints, prints the resume command and exits 130; --resume finishes the run', async () => {
  let sent = false;
  const r = await moma(['train', '--steps', '100000', ...SMALL, '--config', config, '--out', 'interrupted', '--json-log'], (text, child) => {
    if (!sent && /"step":\d+/.test(text)) {
      sent = true;
      child.kill('SIGINT');
    }
  });
  expect(r.code).toBe(130);
  const steps = stepLines('interrupted');
  const last = steps[steps.length - 1]!;
  expect(steps).toEqual(Array.from({ length: last }, (_, i) => i + 1));
  expect(fs.readdirSync(path.join(dir, 'interrupted', 'checkpoints'))).toEqual([`step-${String(last).padStart(6, '0')}`]);
  expect(r.stderr).toContain('stopping after the current step');
  expect(r.stderr).toContain(`stopped at step ${last}`);
  expect(r.stderr).toContain('resume with: moma train --resume interrupted');
  // with --json-log, stdout holds only the metrics records
  expect(r.stdout.trim().split('\n').map((l) => (JSON.parse(l) as { step: number }).step)).toEqual(steps);

  const resumed = await moma(['train', '--resume', 'interrupted', '--steps', String(last + 5)]);
  expect(resumed.code).toBe(0);
  expect(resumed.stdout).toContain(`resuming interrupted from step ${last}`);
  expect(resumed.stdout).toMatch(new RegExp(`done at step ${last + 5} in .*: 5 steps`));
  expect(stepLines('interrupted')).toEqual(Array.from({ length: last + 5 }, (_, i) => i + 1));
});

test('a run killed with SIGKILL resumes from its last checkpoint', async () => {
  let killed = false;
  const r = await moma(['train', '--steps', '100000', ...SMALL, '--config', config, '--out', 'killed', '--json-log', '--checkpoint-every', '3'], (text, child) => {
    if (!killed && text.includes('"step":7,')) {
      killed = true;
      child.kill('SIGKILL');
    }
  });
  expect(r.signal).toBe('SIGKILL');
  const checkpoints = fs.readdirSync(path.join(dir, 'killed', 'checkpoints')).filter((n) => /^step-\d+$/.test(n));
  const newest = Math.max(...checkpoints.map((n) => Number(n.slice(5))));
  expect(newest).toBeGreaterThanOrEqual(6);
  const resumed = await moma(['train', '--resume', 'killed', '--steps', String(newest + 2)]);
  expect(resumed.code).toBe(0);
  expect(resumed.stdout).toContain(`resuming killed from step ${newest}`);
  expect(stepLines('killed')).toEqual(Array.from({ length: newest + 2 }, (_, i) => i + 1));
});

test('moma report regenerates the report of a run', async () => {
  fs.rmSync(path.join(dir, 'short', 'report.html'));
  const r = await moma(['report', 'short']);
  expect(r.code).toBe(0);
  expect(r.stdout).toContain(`report: ${path.join('short', 'report.html')}`);
  expect(fs.readFileSync(path.join(dir, 'short', 'report.html'), 'utf8')).toContain('Training loss by modality');
  const missing = await moma(['report', 'nowhere']);
  expect(missing.code).toBe(1);
  expect(missing.stderr).toContain('ERR_ARG');
});
