"""Write what the GPU proof measured (DIR/gpu_results.json, as the run tool brought it back) into the benchmark notebooks,
as markdown cells that name the card, the driver, torch and the date, without executing them:

    nbs/91_benchmark_training.ipynb   the command line on CUDA (one row per step) and the throughput table (a)(b)(c)
    nbs/92_benchmark_inference.ipynb  inference images/s from DICOM files and from the cache, fp32 and bf16

The cells have fixed ids (gpu-proof-*): recording again replaces them. The sentences of the notebooks' prose that say
the GPU tables were never run are replaced where they are found as written. Results of the CPU mode are refused
unless --test (to try this on copies of the notebooks).

    python .ci/gpu_record.py DIR [--nbs nbs] [--test]
"""
import argparse, json, re, sys
from pathlib import Path

def _fmt(v, nd=None):
    if v is None: return '–'
    return f'{v:,.{(1 if v < 100 else 0) if nd is None else nd}f}'

def _mem(r): return '–' if r.get('peak_gpu_mib') is None else f"{r['peak_gpu_mib'] / 1024:.1f} GiB"
def _cell(s:str)->str: return str(s).replace('/tmp/gpuproof', 'WORK').replace('|', '\\|').replace('\n', ' ')

def provenance(res:dict)->str:
    e = res.get('env') or {}
    if not e: return f"(no machine record: its `env` step did not run); {res.get('started', '?')[:16].replace('T', ' ')} UTC; `.ci/gpu` in {res.get('mode')} mode"
    card = e.get('card', '?')
    if e.get('gpus', 1) and e.get('gpus', 1) > 1: card = f"{e['gpus']}× {card}"
    mem = f", {e['gpu_memory_gib']} GiB" if e.get('gpu_memory_gib') else ''
    return (f"**{card}**{mem}, driver {e.get('driver') or '?'}, torch {e.get('torch', '?')} (CUDA {e.get('cuda') or '–'}), "
            f"torchvision {e.get('torchvision', '?')}, Python {e.get('python', '?')}, {e.get('cores', '?')} cores; "
            f"{res.get('started', '?')[:16].replace('T', ' ')} UTC; `.ci/gpu` in {res.get('mode')} mode"
            + (' (a CPU check on tiny data: not a measurement)' if res.get('mode') != 'gpu' else ''))

def _md_cell(cid:str, text:str)->dict:
    lines = text.rstrip('\n').split('\n')
    return dict(cell_type='markdown', id=cid, metadata={}, source=[l + '\n' for l in lines[:-1]] + [lines[-1]])

def cli_table(res:dict)->str:
    p = res.get('params', {})
    out = [f"### Measured on a GPU: the command line on CUDA",
           '', provenance(res) + '.', '',
           f"Every step of `pneumonia_nb` run by `.ci/gpu device` on {p.get('size')}² images: the carried replica of "
           f"{(res.get('replica') or {}).get('n', '?')} real challenge DICOMs ({(res.get('replica') or {}).get('positives', '?')} positive) "
           f"for the commands, and a replica of {p.get('big_n')} (the same files under new patient ids) for the tables; random "
           f"weights, {p.get('epochs')} epoch{'s' if p.get('epochs') != 1 else ''}, batch {p.get('batch')}. Each step ran in its own process under its own time limit.",
           '', '| step | what | status | exit | seconds | its output (one line) |', '|---|---|---|---|---|---|']
    for s in res['steps']:
        if s['name'] == 'install' and res.get('mode') != 'gpu': continue
        out.append(f"| `{s['name']}` | {_cell(s.get('what', ''))} | {s['status']} | {'' if s['rc'] is None else s['rc']} | "
                   f"{s['seconds']:.0f} | {_cell(s['line'])} |")
    par = res.get('parity')
    if par:
        d = ', '.join(f'{k} {v:.1e}' for k, v in par.items() if isinstance(v, float))
        out += ['', f"Export parity on the device ({par.get('device')}), max |difference| of (probability, logit): {d}; "
                    f"{'within' if par.get('pass') else 'NOT within'} export's own limit of 1e-3."]
    tp = res.get('tta_parity')
    if tp:
        out += ['', f"Test-time augmentation ('shift-scale') on the device ({tp.get('device')}) against the CPU, strict fp32, "
                    f"{tp.get('images')} cached images at {tp.get('size')}²: max |difference| of the probability "
                    f"{tp['tta_probability_vs_cpu']:.1e} (logit {tp['tta_logit_vs_cpu']:.1e}), without the views "
                    f"{tp['single_view_probability_vs_cpu']:.1e}; the views themselves move a probability by up to "
                    f"{tp['tta_vs_single_view_probability_cpu']:.3f}; {'within' if tp.get('pass') else 'NOT within'} the limit of 1e-3."]
    return '\n'.join(out)

def throughput_table(res:dict)->str:
    rows = res.get('throughput', [])
    p = res.get('params', {})
    a = {r['compile']: r for r in rows if r['row'].startswith('(a)')}
    out = ['### Measured on a GPU: training throughput', '', provenance(res) + '.', '',
           f"ResNet-18, {p.get('size')}², batch {p.get('tb')}, measured by `.ci/gpu_bench.py` (not by the cell above): (a) torchvision's "
           "ResNet-18 with a 1-channel stem on random tensors already on the card, bf16 autocast, channels-last, AdamW; (b) "
           "`pneumonia_nb.train` end to end as the command runs it (default recipe), timed by a Lightning callback over the "
           "training batches of its second epoch; (c) the original example's path (`DatasetFolder` of float16 `.npy`, "
           f"torchvision transforms in DataLoader workers, fp32, Adam). (a) and (c): median of {p.get('repeats', 3)} timed runs after warm-up.",
           '', '| path | compiled | precision | images/s | vs (a) | peak GPU memory |', '|---|---|---|---|---|---|']
    order = sorted(rows, key=lambda r: (r['compile'], r['row']))
    for r in order:
        ref = a.get(r['compile']) or a.get(False)
        ratio = f"{r['images_per_s'] / ref['images_per_s']:.2f}" if ref else '–'
        extra = f", {r['workers']} workers" if r.get('workers') else ''
        out.append(f"| {_cell(r['row'])}{extra} | {'yes' if r['compile'] else 'no'} | {r.get('precision')} | "
                   f"{_fmt(r['images_per_s'])} | {ratio} | {_mem(r)} |")
    if not rows: out.append('| (no row was measured: see the steps above) | | | | | |')
    ba = res.get('b_over_a', {})
    b = {r['compile']: r['images_per_s'] for r in rows if r['row'].startswith('(b)')}
    if ba or b:
        goals = []
        for c, name in ((False, 'eager'), (True, 'compiled')):
            if c in b: goals.append(f"{name}: b = {_fmt(b[c])} images/s ({'meets' if b[c] >= 10000 else 'short of'} the 10,000 goal)"
                                    + (f", b/a = {ba[name]:.2f} ({'meets' if ba[name] >= 0.85 else 'short of'} the 0.85 goal)" if name in ba else ''))
        out += ['', 'Against the goals (b ≥ 10,000 images/s, b/a ≥ 0.85): ' + '; '.join(goals) + '.']
    bp = next((r.get('path') for r in rows if r['row'].startswith('(b)') and r.get('path')), None)
    if bp: out += ['', 'What (b) ran on: ' + ', '.join(f'{k} `{v}`' for k, v in bp.items()) + '.']
    return '\n'.join(out)

def inference_table(res:dict)->str:
    rows = res.get('inference', [])
    p = res.get('params', {})
    names = list(dict.fromkeys(r['row'] for r in rows))
    get = lambda n, prec: next((r for r in rows if r['row'] == n and r['precision'] == prec), None)
    out = ['### Measured on a GPU', '', provenance(res) + '.', '',
           f"ResNet-18 (random weights, the contract of a {p.get('size')}² cache), batch {p.get('tb')}, measured by `.ci/gpu_bench.py` "
           f"(not by the cells above): {p.get('dicom_n')} replica DICOMs (1024² JPEG Baseline, the challenge's format) through "
           f"`predict_files` as `pneumonia_nb predict` runs it, and {p.get('cache_n')} cached arrays; bf16 is the same call under "
           f"`torch.autocast`. Median of {p.get('repeats', 3)} timed runs after one warm-up run.",
           '', '| path | fp32 images/s | bf16 images/s | peak GPU memory fp32 / bf16 |', '|---|---|---|---|']
    for n in names:
        f, b = get(n, 'fp32'), get(n, 'bf16')
        out.append(f"| {_cell(n)} | {_fmt(f and f['images_per_s'])} | {_fmt(b and b['images_per_s'])} | "
                   f"{_mem(f) if f else '–'} / {_mem(b) if b else '–'} |")
    if not rows: out.append('| (no row was measured: see the steps in 91) | | | |')
    c = [r['images_per_s'] for r in rows if r['row'].startswith('cache')]
    if c: out += ['', f"Against the goal (inference from the cache ≥ 20,000 images/s): best {_fmt(max(c))} images/s, "
                      f"{'met' if max(c) >= 20000 else 'not met'}."]
    return '\n'.join(out)

# %% notebooks
def _src(c): return ''.join(c['source']) if isinstance(c['source'], list) else c['source']

def _place(nb, cells:list, after)->int:
    "Put `cells` (replacing any with their ids) after the first cell for which `after(source)` holds, else at the end."
    ids = {c['id'] for c in cells}
    nb['cells'] = [c for c in nb['cells'] if c.get('id') not in ids]
    i = next((k + 1 for k, c in enumerate(nb['cells']) if after(_src(c))), len(nb['cells']))
    nb['cells'][i:i] = cells
    return i

def _replace_prose(nb, old:str, new:str)->bool:
    for c in nb['cells']:
        if c['cell_type'] == 'markdown' and old in _src(c):
            c['source'] = _md_cell('x', _src(c).replace(old, new))['source']; return True
    return False

def write_nb(nb, path:Path):
    path.write_text(json.dumps(nb, sort_keys=True, indent=1, ensure_ascii=False) + '\n')

def record(res:dict, nbs:Path)->list:
    e = res.get('env') or {}
    when, card = res.get('started', '?')[:10], e.get('card', '?')
    done = []
    f91 = nbs/'91_benchmark_training.ipynb'
    nb = json.loads(f91.read_text())
    i = _place(nb, [_md_cell('gpu-proof-throughput', throughput_table(res)), _md_cell('gpu-proof-cli', cli_table(res))],
               lambda s: 'def throughput_table' in s or 'throughput_table(' in s)
    prose = _replace_prose(nb, '- The throughput table needs a GPU and has not been run.',
                           f'- The throughput table was measured on one {card} on {when} by `.ci/gpu` (the cells *Measured on a GPU* '
                           'above); the cell that computes it here still runs only where a GPU is present.')
    write_nb(nb, f91); done.append(f'{f91}: 2 cells at {i}' + (', prose updated' if prose else ''))
    f92 = nbs/'92_benchmark_inference.ipynb'
    nb = json.loads(f92.read_text())
    i = _place(nb, [_md_cell('gpu-proof-inference', inference_table(res))], lambda s: 'inference_throughput.csv' in s)
    prose = _replace_prose(nb, 'Where a GPU is present this notebook measures both and names the card in the table; it has not been run\n  on one.',
                           f'Where a GPU is present this notebook measures both and names the card in the table; its cells have not\n'
                           f'  been run on one, but `.ci/gpu` measured the GPU rows on one {card} on {when} (*Measured on a GPU*, above).')
    write_nb(nb, f92); done.append(f'{f92}: 1 cell at {i}' + (', prose updated' if prose else ''))
    return done

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('dir', type=Path); ap.add_argument('--nbs', type=Path, default=Path('nbs'))
    ap.add_argument('--test', action='store_true', help='accept the results of the CPU mode (for copies of the notebooks)')
    a = ap.parse_args()
    res = json.loads((a.dir/'gpu_results.json').read_text())
    if res.get('mode') != 'gpu' and not a.test:
        sys.exit(f"{a.dir}: these are results of the {res.get('mode')} mode, not a GPU run; refusing to write them (--test to try on copies)")
    for line in record(res, a.nbs): print(line)
    print('\n' + throughput_table(res) + '\n\n' + inference_table(res))

if __name__ == '__main__': main()
