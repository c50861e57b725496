#!/usr/bin/env python3
"""The one-screen summary of scripts/gpu-check.sh, and its results for bench/results/.

  python3 scripts/gpu_summary.py OUT_DIR [--write-to DIR]

Reads what gpu-check.sh left in OUT_DIR (each file optional; what is missing shows as "-" or n/a):
  meta.json            date, GPU, driver, CUDA versions, commit          (the preflight)
  stages.jsonl         one {"stage", "status", "rc", "seconds", "limit_s"} per stage
  native-test.log      moma_native_test --require-cuda: "FAIL ..." lines, "N passed, N failed, N skipped"
  kernel-bench.jsonl   moma_kernel_bench --json cuda: {"meta"}, {"note"}, {"device": "cuda", "op", ...}
  torch-kernels.jsonl  bench/reference/gpu_kernels.py: {"meta"}, {"device": "torch", "op", ...}
  torch-layers.jsonl   bench/reference/run.py --layers: {"info"}, {"op", "shape", "ms", ...}
  *layers_step*.json   bench/run.js layers step (Node): {"results": [{"device": "cuda", "op", ...}]}, of
                       which the layer.*, block.*, step.* and api.* rows
  node-smoke.log, train-run.json   scripts/gpu-smoke.js
Prints the summary: stages, native test cases passed / failed / skipped, each kernel's rate, % of
the ceiling measured in the same run, and speed relative to PyTorch on the same GPU (x torch: above
1 moma is faster), then the issue's targets PASS / MISS (n/a when a number is missing). Writes
<date>-<gpu>-gpu-check.md and .json (every result with the run's device, driver, CUDA and date) to
DIR (default OUT_DIR). Exit status 0 when it could summarise; the verdict is the stages'.
"""
import argparse
import glob
import json
import os
import re
import sys

# moma op -> the PyTorch measurement it is compared with. The moma shape regex (matched at the
# start) names the groups the torch shape is built from. by "time": the same work, x torch =
# torch ms / moma ms; by "rate": equal work by another route (a grouped GEMM against the dense GEMM
# of equal FLOPs, dispatch against a gather), x torch = moma rate / torch rate (same unit).
SAME = r'(?P<s>.+)'
MOE_ROWS = r'(?P<layout>\S+) T(?P<T>\d+) (?P<rows>\d+)x(?P<d>\d+)'
# a grouped GEMM's shape: rows routed x K x N; its dense twin of equal FLOPs is T x N x K (M x N x K)
MOE_GEMM = r'(?P<layout>\S+) T(?P<T>\d+) (?P<rows>\d+)x(?P<k>\d+)x(?P<n>\d+)'
PAIRS = [
    # moma op                      moma shape                                      torch op                        torch shape               by
    ('ceiling.copy_d2d',           SAME,                                           'ceiling.copy_d2d',             '{s}',                    'rate'),
    ('ceiling.gemm_bf16',          SAME,                                           'gemm_bf16',                    '{s}',                    'time'),
    ('gemm_bf16',                  SAME,                                           'gemm_bf16',                    '{s}',                    'time'),
    ('gemm_f32in',                 SAME,                                           'gemm_f32in',                   '{s}',                    'time'),
    ('gemm_f32_router',            SAME,                                           'gemm_f32in',                   '{s}',                    'time'),
    ('moe.grouped_gemm',           MOE_GEMM + r' bf16$',                           'gemm_bf16',                    '{T}x{n}x{k}',            'rate'),
    ('moe.grouped_gemm_swiglu',    MOE_GEMM + r' x2 bf16$',                        'gemm_bf16',                    '{T}x{n}x{k}',            'rate'),
    ('moe.grouped_gemm_scaled',    MOE_GEMM + r' bf16$',                           'gemm_bf16',                    '{T}x{n}x{k}',            'rate'),
    ('moe.grouped_gemm_wgrad',     MOE_GEMM + r' bf16 ->f32',                      'gemm_bf16_wgrad',              '{k}x{n}x{T}',            'rate'),
    ('moe.gather_rows',            MOE_ROWS + r' bf16',                            'index_select_rows_bf16',       '{T}x{d}',                'rate'),
    ('moe.combine',                MOE_ROWS + r' bf16',                            'index_add_rows_bf16',          '{T}x{d}',                'rate'),
    ('attention_fwd_bf16_tc',      r'(?P<s>N\d+xH\d+xD\d+xseg\d+)',                'attention_fwd_bf16_tc',        '{s}',                    'time'),
    ('attention_bwd_bf16_tc',      r'(?P<s>N\d+xH\d+xD\d+xseg\d+)',                'attention_bwd_bf16_tc',        '{s}',                    'time'),
    ('nn.attention',               r'(?P<N>\d+)x(?P<H>\d+)x(?P<D>\d+) seg(?P<S>\d+) bf16', 'attention_fwd_bf16_tc', 'N{N}xH{H}xD{D}xseg{S}', 'time'),
    ('nn.attention_backward',      r'(?P<N>\d+)x(?P<H>\d+)x(?P<D>\d+) seg(?P<S>\d+) bf16', 'attention_bwd_bf16_tc', 'N{N}xH{H}xD{D}xseg{S}', 'time'),
    ('nn.rmsnorm',                 SAME,                                           'nn.rmsnorm',                   '{s}',                    'time'),
    ('nn.cross_entropy',           SAME,                                           'nn.cross_entropy',             '{s}',                    'time'),
    ('fill_f32',                   SAME,                                           'fill_f32',                     '{s}',                    'time'),
    ('cast_f32_bf16',              SAME,                                           'cast_f32_bf16',                '{s}',                    'time'),
    ('unary_silu_f32',             SAME,                                           'unary_silu_f32',               '{s}',                    'time'),
    ('unary_silu_bf16',            SAME,                                           'unary_silu_bf16',              '{s}',                    'time'),
    ('binary_add_bcast_f32',       SAME,                                           'binary_add_bcast_f32',         '{s}',                    'time'),
    ('softmax_rows_f32',           SAME,                                           'softmax_rows_f32',             '{s}',                    'time'),
    ('reduce_sum_rows_f32',        SAME,                                           'reduce_sum_rows_f32',          '{s}',                    'time'),
    ('strided_copy_transpose',     SAME,                                           'strided_copy_transpose',       '{s}',                    'time'),
    ('index_select_rows_f32',      SAME,                                           'index_select_rows_f32',        '{s}',                    'time'),
    ('layer.dense_swiglu.fwd_bwd', SAME,                                           'layer.dense_swiglu.fwd_bwd',   '{s}',                    'time'),
    ('layer.moma_4t4i.fwd_bwd',    SAME,                                           'layer.moma_4t4i.fwd_bwd',      '{s}',                    'time'),
    ('layer.moe_8x.fwd_bwd',       SAME,                                           'layer.moe_8x.fwd_bwd',         '{s}',                    'time'),
]

# The targets (issue 13): name, threshold, and how the value is found (see targets()).
ATTENTION_SHAPE = 'N8192xH16xD{D}xseg4096'
LAYER_SHAPE = 'T8192 d1024 f4096 c1'


def read_lines(path):
    try:
        with open(path) as f:
            return f.read().splitlines()
    except OSError:
        return []


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def json_lines(path):
    records = []
    for line in read_lines(path):
        if line.startswith('{'):
            try:
                records.append(json.loads(line))
            except ValueError:
                pass
    return records


def load(out):
    """Everything gpu-check.sh wrote, as one dict (the .json written beside the summary)."""
    bench = json_lines(os.path.join(out, 'kernel-bench.jsonl'))
    torch_kernels = json_lines(os.path.join(out, 'torch-kernels.jsonl'))
    torch_layers = json_lines(os.path.join(out, 'torch-layers.jsonl'))
    node_layers = []
    for path in sorted(glob.glob(os.path.join(out, '*layers_step*.json'))):
        report = read_json(path) or {}
        # its layer, block, step and API rows (its ceiling and kernel rows repeat the kernel bench's)
        node_layers += [r for r in report.get('results', []) if str(r.get('device', '')).startswith('cuda')
                        and r.get('op', '').startswith(('layer.', 'block.', 'step.', 'api.'))]
    torch_rows = [r for r in torch_kernels if r.get('device') == 'torch' and 'op' in r]
    torch_rows += [{'device': 'torch', **r, 'rate': r['flops'] / r['ms'] / 1e9, 'unit': 'TFLOP/s'}
                   for r in torch_layers if 'op' in r and r.get('flops') and r.get('ms')]
    return {
        'meta': read_json(os.path.join(out, 'meta.json')) or {},
        'kernel_bench_meta': next((r['meta'] for r in bench if 'meta' in r), None),
        'torch_meta': next((r['meta'] for r in torch_kernels if 'meta' in r), None),
        'torch_layers_info': next((r['info'] for r in torch_layers if 'info' in r), None),
        'stages': json_lines(os.path.join(out, 'stages.jsonl')),
        'native': native_counts(read_lines(os.path.join(out, 'native-test.log'))),
        'node_smoke': node_smoke(out),
        'moma': [r for r in bench if r.get('device') == 'cuda' and 'op' in r] + node_layers,
        'torch': torch_rows,
        'notes': [r['note'] for r in bench if 'note' in r and 'meta' not in r],
    }


def native_counts(lines):
    counts = None
    for line in lines:
        m = re.match(r'^(\d+) passed, (\d+) failed, (\d+) skipped$', line.strip())
        if m:
            counts = {'passed': int(m[1]), 'failed': int(m[2]), 'skipped': int(m[3])}
    if counts is None:
        return None
    counts['failures'] = [line for line in lines if line.startswith('FAIL')][:50]
    return counts


def node_smoke(out):
    lines = read_lines(os.path.join(out, 'node-smoke.log'))
    counts = None
    for line in lines:
        m = re.match(r'^(\d+) passed, (\d+) failed$', line.strip())
        if m:
            counts = {'passed': int(m[1]), 'failed': int(m[2])}
    if counts is None and not lines:
        return None
    return {**(counts or {'passed': None, 'failed': None}),
            'checks': [line for line in lines if line.startswith(('ok ', 'FAIL '))],
            'train_run': read_json(os.path.join(out, 'train-run.json'))}


def torch_pair(row, torch_index):
    """(torch row, by) for a moma row, or (None, None)."""
    for op, pattern, torch_op, torch_shape, by in PAIRS:
        if op != row['op']:
            continue
        m = re.match(pattern, row['shape'])
        if not m:
            continue
        t = torch_index.get((torch_op, torch_shape.format(**m.groupdict())))
        if t is not None:
            return t, by
    return None, None


def speed_ratio(row, t, by):
    """moma's speed over torch's: above 1 moma is faster."""
    if t is None or 'skipped' in t:
        return None
    if by == 'rate':
        if row.get('rate') and t.get('rate') and row.get('unit') == t.get('unit'):
            return row['rate'] / t['rate']
        return None
    return t['ms'] / row['ms'] if row.get('ms') and t.get('ms') else None


def paired_rows(data):
    torch_index = {(t['op'], t['shape']): t for t in data['torch']}
    rows = []
    for r in data['moma']:
        t, by = torch_pair(r, torch_index)
        rows.append({**r, 'torch': t, 'by': by, 'x_torch': speed_ratio(r, t, by)})
    return rows


def find(rows, op, shape=None, prefix=None):
    for r in rows:
        if r['op'] == op and (shape is None or r['shape'] == shape) and (prefix is None or r['shape'].startswith(prefix)):
            return r
    return None


def targets(data, rows):
    """The issue's targets: [{name, threshold, value, status, detail}]."""
    torch_index = {(t['op'], t['shape']): t for t in data['torch'] if 'skipped' not in t}
    result = []

    def add(name, threshold, value, detail):
        status = 'n/a' if value is None else ('PASS' if value >= threshold else 'MISS')
        result.append({'name': name, 'threshold': threshold, 'value': value, 'status': status, 'detail': detail})

    shape = '4096x4096x4096'
    gemm = find(rows, 'gemm_bf16', shape) or find(rows, 'ceiling.gemm_bf16', shape)
    t = torch_index.get(('gemm_bf16', shape))
    add('bf16 GEMM 4096^3 >= 0.8x torch.matmul', 0.8, t and gemm and t['ms'] / gemm['ms'],
        describe(gemm, t) if gemm or t else 'no gemm_bf16 4096x4096x4096 row')

    grouped = find(rows, 'moe.grouped_gemm', prefix='4t4i T8192 ')
    t, by = torch_pair(grouped, torch_index) if grouped else (None, None)
    add('grouped expert GEMM (8 experts, T 8192, d 1024, f 4096) >= 0.7x torch dense GEMM of equal FLOPs', 0.7,
        speed_ratio(grouped, t, by) if grouped else None, describe(grouped, t, by) if grouped else 'no moe.grouped_gemm 4t4i T8192 row')

    for D in (64, 128):
        shape = ATTENTION_SHAPE.format(D=D)
        fwd, bwd = find(rows, 'attention_fwd_bf16_tc', prefix=shape), find(rows, 'attention_bwd_bf16_tc', prefix=shape)
        t = torch_index.get(('attention_fwd_bwd_bf16_tc', shape))
        value = t['ms'] / (fwd['ms'] + bwd['ms']) if fwd and bwd and t else None
        detail = (f"moma {fwd['ms'] + bwd['ms']:.3f} ms (fwd {fwd['ms']:.3f} + bwd {bwd['ms']:.3f}), torch {t['ms']:.3f} ms"
                  if value is not None else f'needs moma attention_fwd/bwd_bf16_tc and torch attention_fwd_bwd_bf16_tc at {shape}')
        add(f'attention fwd+bwd D{D} >= 0.6x torch flash SDPA', 0.6, value, detail)

    layer = find(rows, 'layer.moma_4t4i.fwd_bwd', LAYER_SHAPE)
    t = torch_index.get(('layer.moma_4t4i.fwd_bwd', LAYER_SHAPE))
    add('MoMa 4t4i layer fwd+bwd >= 1.5x faster than the PyTorch eager reference', 1.5, t and layer and t['ms'] / layer['ms'],
        describe(layer, t) if layer and t else f'needs moma (bench/run.js layers, Node) and torch layer.moma_4t4i.fwd_bwd {LAYER_SHAPE}')

    for op, what in (('moe.gather_rows', 'dispatch'), ('moe.combine', 'combine')):
        r = find(rows, op, prefix='4t4i T8192 ')
        value = r['pct_measured'] / 100 if r and r.get('pct_measured') is not None else None
        detail = f"{r['rate']:.0f} GB/s = {r['pct_measured']:.1f}% of the copy ceiling measured in the run" if value is not None \
            else f'no {op} 4t4i T8192 row'
        add(f'{what} ({op}) >= 80% of the measured copy bandwidth', 0.8, value, detail)
    return result


def describe(row, t, by='time'):
    if not row or not t:
        return 'moma ' + ('-' if not row else f"{row['ms']:.3f} ms") + ', torch ' + ('-' if not t else f"{t['ms']:.3f} ms")
    if by == 'rate':
        return f"moma {row['rate']:.1f} {row['unit']}, torch {t['op']} {t['shape']} {t['rate']:.1f} {t['unit']}"
    return f"moma {row['ms']:.3f} ms, torch {t['ms']:.3f} ms"


def verdict(data):
    stages = [s for s in data['stages'] if s.get('stage') != 'total']
    bad = [s['stage'] + ' ' + s['status'] for s in stages if s.get('status') not in ('ok', 'absent')]
    if not stages:
        return 'FAIL', ['no stage ran']
    return ('PASS', []) if not bad else ('FAIL', bad)


def num(v, fmt='{:.1f}'):
    return '-' if v is None else fmt.format(v)


def slug(meta):
    date = (meta.get('date') or 'undated')[:10]
    gpu = (meta.get('gpu') or 'cpu').lower()
    gpu = re.sub(r'^nvidia[ -]', '', gpu)
    return f"{date}-{re.sub(r'[^a-z0-9]+', '-', gpu).strip('-')}-gpu-check"


def ceilings(rows, data):
    def best(items, op, unit):
        rates = [r['rate'] for r in items if r['op'] == op and r.get('unit') == unit and r.get('rate')]
        return max(rates) if rates else None
    torch = [t for t in data['torch'] if 'skipped' not in t]
    return {'moma_copy_gbs': best(rows, 'ceiling.copy_d2d', 'GB/s'), 'moma_gemm_bf16_tflops': best(rows, 'ceiling.gemm_bf16', 'TFLOP/s'),
            'torch_copy_gbs': best(torch, 'ceiling.copy_d2d', 'GB/s'), 'torch_gemm_bf16_tflops': best(torch, 'gemm_bf16', 'TFLOP/s')}


def screen(data, rows, goals, word, bad, ceil):
    m = data['meta']
    tm = data['torch_meta'] or data['torch_layers_info'] or {}
    lines = [f"moma gpu-check {m.get('date', '-')}  {m.get('gpu') or 'no GPU'} (cc {m.get('compute_capability') or '-'}, "
             f"{m.get('memory') or '-'})  driver {m.get('driver') or '-'} (CUDA {m.get('driver_cuda') or '-'})  "
             f"nvcc {m.get('nvcc_cuda') or '-'}  torch {tm.get('torch', '-')}  commit {m.get('commit', '-')}"]
    lines.append('stages: ' + ' | '.join(f"{s['stage']} {s['status']} {s['seconds']}s" for s in data['stages'] if s.get('stage') != 'total'))
    n = data['native']
    lines.append('native test: ' + (f"{n['passed']} passed, {n['failed']} failed, {n['skipped']} skipped" if n else 'no result')
                 + ''.join(f'\n  {f}' for f in (n or {}).get('failures', [])[:5]))
    s = data['node_smoke']
    if s:
        run = s.get('train_run') or {}
        lines.append(f"node smoke: {s['passed']} passed, {s['failed']} failed" +
                     (f"; trainRun {run.get('preset')} {run.get('steps')} steps, {run.get('tokensPerSecond', 0):.0f} tokens/s" if run else ''))
    lines.append(f"ceilings measured: moma copy {num(ceil['moma_copy_gbs'], '{:.0f}')} GB/s, bf16 GEMM "
                 f"{num(ceil['moma_gemm_bf16_tflops'])} TFLOP/s | torch copy {num(ceil['torch_copy_gbs'], '{:.0f}')} GB/s, "
                 f"bf16 matmul {num(ceil['torch_gemm_bf16_tflops'])} TFLOP/s")
    lines.append('')
    lines.append(f"{'kernel (first shape of each)':<28} {'shape':<30} {'rate':>9} {'unit':<8} {'%ceil':>6} {'torch':>9} {'x torch':>7}")
    seen = set()
    for r in rows:
        if r['op'] in seen or r['op'].startswith('ceiling.'):
            continue
        seen.add(r['op'])
        t = r['torch'] if r['torch'] and 'skipped' not in r['torch'] else None
        lines.append(f"{r['op'][:28]:<28} {r['shape'][:30]:<30} {num(r.get('rate')):>9} {r.get('unit', ''):<8} "
                     f"{num(r.get('pct_measured'), '{:.0f}%'):>6} {num(t and t.get('rate')):>9} {num(r['x_torch'], '{:.2f}'):>7}")
    lines.append('')
    lines.append('targets (issue 13):')
    for g in goals:
        lines.append(f"  {g['status']:<4} {g['name']}: {num(g['value'], '{:.2f}')} (need {g['threshold']}); {g['detail']}")
    counts = {k: sum(g['status'] == k for g in goals) for k in ('PASS', 'MISS', 'n/a')}
    absent = [st['stage'] for st in data['stages'] if st.get('status') == 'absent']
    passed = ' (every stage ran and passed)' if not absent else f" (every stage that ran passed; not run: {', '.join(absent)})"
    lines.append(f"verdict: {word}" + (f" ({'; '.join(bad)})" if bad else passed) +
                 f"; targets {counts['PASS']} PASS, {counts['MISS']} MISS, {counts['n/a']} n/a")
    return lines


def markdown(data, rows, goals, word, bad, ceil):
    m = data['meta']
    tm = data['torch_meta'] or {}
    md = [f"# gpu-check {m.get('date', '')}: {m.get('gpu') or 'no GPU'}", '',
          '`bash scripts/gpu-check.sh` (docs/GPU.md): native test, kernel bench, PyTorch on the same GPU, Node runs.', '',
          '| | |', '| --- | --- |']
    for key, value in [('GPU', m.get('gpu')), ('compute capability', m.get('compute_capability')), ('memory', m.get('memory')),
                       ('driver', f"{m.get('driver') or '-'} (CUDA {m.get('driver_cuda') or '-'})"), ('nvcc', m.get('nvcc_cuda')),
                       ('built for', m.get('cuda_archs') and f"sm_{m['cuda_archs']}"), ('torch', tm.get('torch')),
                       ('torch CUDA', tm.get('torch_cuda')), ('host', m.get('host')), ('commit', m.get('commit')),
                       ('verdict', word + (f" ({'; '.join(bad)})" if bad else ''))]:
        md.append(f'| {key} | {value if value is not None else "-"} |')
    md += ['', '## Stages', '', '| stage | status | seconds | limit |', '| --- | --- | ---: | ---: |']
    md += [f"| {s['stage']} | {s['status']} | {s['seconds']} | {s['limit_s']} |" for s in data['stages']]
    n = data['native']
    md += ['', '## Native test', '', f"{n['passed']} passed, {n['failed']} failed, {n['skipped']} skipped" if n else 'no result']
    md += [f'- `{f}`' for f in (n or {}).get('failures', [])]
    md += ['', '## Targets', '', '| target | value | need | status | detail |', '| --- | ---: | ---: | --- | --- |']
    md += [f"| {g['name']} | {num(g['value'], '{:.2f}')} | {g['threshold']} | {g['status']} | {g['detail']} |" for g in goals]
    md += ['', '## Kernels and layers', '',
           f"Ceilings measured in the run: moma copy {num(ceil['moma_copy_gbs'], '{:.0f}')} GB/s, bf16 GEMM "
           f"{num(ceil['moma_gemm_bf16_tflops'])} TFLOP/s; torch copy {num(ceil['torch_copy_gbs'], '{:.0f}')} GB/s, bf16 matmul "
           f"{num(ceil['torch_gemm_bf16_tflops'])} TFLOP/s. x torch: moma's speed over PyTorch's (above 1 moma is faster).", '',
           '| op | shape | ms | rate | unit | % ceiling | torch op | torch shape | torch ms | torch rate | x torch |',
           '| --- | --- | ---: | ---: | --- | ---: | --- | --- | ---: | ---: | ---: |']
    for r in rows:
        t = r['torch'] if r['torch'] and 'skipped' not in r['torch'] else {}
        md.append(f"| {r['op']} | {r['shape']} | {num(r.get('ms'), '{:.4g}')} | {num(r.get('rate'))} | {r.get('unit', '')} | "
                  f"{num(r.get('pct_measured'))} | {t.get('op', '-')} | {t.get('shape', '-')} | {num(t.get('ms'), '{:.4g}')} | "
                  f"{num(t.get('rate'))} | {num(r['x_torch'], '{:.2f}')} |")
    skipped = [t for t in data['torch'] if 'skipped' in t]
    if skipped:
        md += ['', 'PyTorch measurements skipped: ' + '; '.join(f"{t['op']} {t['shape']} ({t['skipped']})" for t in skipped)]
    s = data['node_smoke']
    if s:
        md += ['', '## Node smoke run', '', f"{s['passed']} passed, {s['failed']} failed", '']
        md += [f'- {c}' for c in s['checks']]
    return '\n'.join(md) + '\n'


def main():
    parser = argparse.ArgumentParser(description='summary of a scripts/gpu-check.sh output folder')
    parser.add_argument('out', help="gpu-check.sh's output folder")
    parser.add_argument('--write-to', help='where the .md and .json go (default: the output folder)')
    args = parser.parse_args()
    if not os.path.isdir(args.out):
        sys.exit(f'gpu_summary: {args.out} is not a folder')
    data = load(args.out)
    rows = paired_rows(data)
    goals = targets(data, rows)
    word, bad = verdict(data)
    ceil = ceilings(rows, data)
    print('\n'.join(screen(data, rows, goals, word, bad, ceil)))
    dest = args.write_to or args.out
    os.makedirs(dest, exist_ok=True)
    name = slug(data['meta'])
    result = {'meta': data['meta'], 'kernel_bench_meta': data['kernel_bench_meta'], 'torch_meta': data['torch_meta'],
              'torch_layers_info': data['torch_layers_info'], 'verdict': word, 'failed_stages': bad, 'stages': data['stages'],
              'native': data['native'], 'node_smoke': data['node_smoke'], 'ceilings': ceil, 'targets': goals,
              'results': rows,
              'torch_results': data['torch'], 'notes': data['notes'], 'pairs': [list(p) for p in PAIRS]}
    with open(os.path.join(dest, name + '.json'), 'w') as f:
        json.dump(result, f, indent=2)
        f.write('\n')
    with open(os.path.join(dest, name + '.md'), 'w') as f:
        f.write(markdown(data, rows, goals, word, bad, ceil))
    print(f'wrote {os.path.join(dest, name)}.md and .json')


if __name__ == '__main__':
    main()
