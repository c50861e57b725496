/**
 * `moma train` and `moma report` as a user runs them: the built CLI (dist/, rebuilt with tsc when
 * a source is newer) in a child process. A short run, bad flags, Ctrl-C (exit 130, checkpoint,
 * resume command) then --resume, SIGTERM (exit 143, the same), SIGKILL then --resume,
 * --checkpoint-minutes, and `moma report`; in-process, the held-out loss in the progress bar and lines.
 */
import type { ChildProcess } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { Writable } from 'stream';
import { barProgress, lineProgress } from '../lib/cli/train';
import type { EvalRecord, StepRecord } from '../lib/run/records';
import type { RunStartInfo } from '../lib/run/run';
import { CliResult, ensureDist, runCli } from './support/cli';

let dir: string;
let config: string;

/** Runs the CLI in the temp working folder. */
const moma = (args: string[], onStdout?: (text: string, child: ChildProcess) => void): Promise<CliResult> => runCli(dir, args, onStdout);

function stepLines(runDir: string): number[] {
  return fs.readFileSync(path.join(dir, runDir, 'metrics.jsonl'), 'utf8').split('\n').filter((l) => l !== '')
    .map((l) => JSON.parse(l) as { step: number; kind?: string }).filter((r) => r.kind === 'step').map((r) => r.step);
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

test('SIGTERM (Slurm, Kubernetes, preemption) stops like Ctrl-C: checkpoint, report, resume command, exit 143', async () => {
  let sent = false;
  const r = await moma(['train', '--steps', '100000', ...SMALL, '--config', config, '--out', 'terminated', '--json-log'], (text, child) => {
    if (!sent && /"step":\d+/.test(text)) {
      sent = true;
      child.kill('SIGTERM');
    }
  });
  expect(r.code).toBe(143);
  const steps = stepLines('terminated');
  const last = steps[steps.length - 1]!;
  expect(fs.readdirSync(path.join(dir, 'terminated', 'checkpoints'))).toEqual([`step-${String(last).padStart(6, '0')}`]);
  expect(fs.existsSync(path.join(dir, 'terminated', 'report.html'))).toBe(true);
  expect(r.stderr).toContain('SIGTERM: stopping after the current step (SIGTERM again quits at once');
  expect(r.stderr).toContain('resume with: moma train --resume terminated');
  const resumed = await moma(['train', '--resume', 'terminated', '--steps', String(last + 2)]);
  expect(resumed.code).toBe(0);
  expect(stepLines('terminated')).toEqual(Array.from({ length: last + 2 }, (_, i) => i + 1));
});

test('--checkpoint-minutes checkpoints by wall time (a tiny interval: at every logged step), kept on resume', async () => {
  const r = await moma(['train', '--steps', '6', ...SMALL, '--config', config, '--out', 'timed', '--log-every', '2', '--eval-every', '0', '--checkpoint-minutes', '1e-6']);
  expect(r.code).toBe(0);
  // --checkpoint-every is 200: steps 4 and 6 (the newest two of 2, 4, 6) come from the time
  expect(fs.readdirSync(path.join(dir, 'timed', 'checkpoints')).sort()).toEqual(['step-000004', 'step-000006']);
  const run = JSON.parse(fs.readFileSync(path.join(dir, 'timed', 'run.json'), 'utf8')) as { config: { checkpointMinutes: number }; environment: { command: string[] } };
  expect(run.config.checkpointMinutes).toBe(1e-6);
  expect(run.environment.command).toEqual(['moma', 'train', '--steps', '6', ...SMALL, '--config', config, '--out', 'timed', '--log-every', '2', '--eval-every', '0', '--checkpoint-minutes', '1e-6']);
  const resumed = await moma(['train', '--resume', 'timed', '--steps', '8']);
  expect(resumed.code).toBe(0);
  expect(fs.readdirSync(path.join(dir, 'timed', 'checkpoints')).sort()).toEqual(['step-000006', 'step-000008']);
  expect(stepLines('timed')).toEqual([2, 4, 6, 8]);
});

describe('the held-out loss in the progress', () => {
  const info = { settings: { steps: 100 }, startStep: 0 } as unknown as RunStartInfo;
  const step = (n: number): StepRecord => ({ kind: 'step', step: n, loss: 2.5, lossPerModality: { text: 2.25, image: 2.75 }, tokensPerSecond: 1234 } as unknown as StepRecord);
  const heldOut = { kind: 'eval', step: 50, loss: 1.875, lossPerModality: { text: 1.5, image: 2.25 } } as unknown as EvalRecord;

  test('the bar shows it once there is one, within 80 columns', () => {
    let written = '';
    const stream = new Writable({ write(chunk, _enc, done) { written += String(chunk); done(); } });
    const progress = barProgress({ stream, forceOutput: true });
    progress.start(info);
    progress.step(step(10));
    const before = written;
    progress.eval(heldOut);
    progress.step(step(60));
    progress.stop();
    expect(before).toContain('held-out -');
    const lines = written.split(/\r|\n/).map((l) => l.replace(/\x1b\[[0-9;?]*[A-Za-z]/g, '')).filter((l) => l.startsWith('step 60/100'));
    expect(lines.length).toBeGreaterThan(0);
    expect(lines[0]).toMatch(/^step 60\/100 \S+ text 2\.250 image 2\.750 held-out 1\.875 \| 1234 tok\/s \| ETA /);
    expect(lines[0]!.length).toBeLessThanOrEqual(80);
  });

  test('the lines: one per evaluation, then on each step line', () => {
    const said: string[] = [];
    const progress = lineProgress((l) => said.push(l));
    progress.start(info);
    progress.step(step(1));
    progress.eval(heldOut);
    progress.step(step(60));
    expect(said[0]).not.toContain('held-out');
    expect(said[1]).toBe('held-out at step 50: loss 1.875 (text 1.500, image 2.250)');
    expect(said[2]).toMatch(/^step 60\/100 +loss 2\.500 .*  held-out 1\.875 \(step 50\)$/);
  });
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
