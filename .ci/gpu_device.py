"""The GPU proof's runner: every step in its own process under its own time limit, inside one overall budget; a failed
or timed-out step is recorded (exit status, seconds, one line of its output) and the run goes on. Standard library
only, so that nothing it measures can break it.

    GPU_PROOF_MODE=gpu   (the device machine, `.ci/gpu device`): 224², the carried replica, CUDA
    GPU_PROOF_MODE=cpu   (here, `.ci/gpu local`): the same steps on tiny data on the CPU

Environment: GPU_PROOF_PYTHON (the interpreter; default this one), GPU_PROOF_DATA (the small real-format replica;
default .device/data), GPU_PROOF_WORK (scratch; default /tmp/gpuproof[-local]), OUT (where the results go; default
WORK/out), GPU_PROOF_BUDGET_S (the whole run; default 470 s on the GPU), GPU_PROOF_ONLY (comma-separated step names).
Writes OUT/gpu_results.json and OUT/gpu_log.txt after every step, and OUT/eval_report.md, OUT/tune_report.md.
"""
import json, os, re, shlex, shutil, signal, subprocess, sys, time, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODE = os.environ.get('GPU_PROOF_MODE', 'gpu')
GPU = MODE == 'gpu'
PY = os.environ.get('GPU_PROOF_PYTHON', sys.executable)
WORK = Path(os.environ.get('GPU_PROOF_WORK', '/tmp/gpuproof' if GPU else '/tmp/gpuproof-local'))
OUT = Path(os.environ.get('OUT') or WORK/'out')
DATA = Path(os.environ.get('GPU_PROOF_DATA', ROOT/'.device'/'data'))
BUDGET = float(os.environ.get('GPU_PROOF_BUDGET_S', 470 if GPU else 5400))
ONLY = [s for s in os.environ.get('GPU_PROOF_ONLY', '').split(',') if s]
SITE = Path('/tmp/site')
RESERVE = 8   # seconds kept at the end for the last writes

# sizes: the device run (224², a few hundred real images, batch 256 for the tables) and the CPU check (tiny)
P = dict(size=224, epochs=2, batch=64, trials=2, big_n=16384, new_n=64, tb=256, a_warm=10, a_steps=50, b_warm=3,
         c_warm=5, c_steps=20, dicom_n=4096, cache_n=8192, repeats=3, dev='cuda') if GPU else \
    dict(size=64, epochs=1, batch=8, trials=1, big_n=256, new_n=16, tb=8, a_warm=1, a_steps=2, b_warm=2,
         c_warm=1, c_steps=2, dicom_n=16, cache_n=32, repeats=1, dev='cpu')

W = {k: WORK/k for k in ('cache', 'train', 'eval', 'new', 'export', 'cv', 'tune', 'big', 'bigcache', 'processed', 'train_compile', 'ours', 'ours_compile')}
PNB = [PY, '-m', 'pneumonia_nb', '-q']
BENCH = [PY, str(ROOT/'.ci'/'gpu_bench.py')]
REP = ['--repeats', P['repeats']]
ROWS = WORK/'rows.jsonl'
CKPT = W['train']/'checkpoints'/'best.ckpt'
COMMON = ['--model.pretrained', 'none', '--optim.batch_size', str(P['batch'])]
S = str(P['size'])

def step(name, argv, limit_gpu, limit_cpu, needs=(), pick=None, what='', group=None):
    "One step; consecutive steps of one `group` run at the same time (none of them is timed work)."
    return dict(name=name, argv=[str(a) for a in argv], limit=limit_gpu if GPU else limit_cpu, needs=list(needs), pick=pick, what=what, group=group)

# evaluate, predict, export, cross-validation, tune and the larger cache run side by side (group 'cli'): none of
# them is timed, and the device has 16 cores and room on the card for all; the tables run one at a time after them
STEPS = [
    step('install', [PY, '-m', 'pip', 'install', '-q', '--no-index', '--no-deps', '--no-compile', '--no-cache-dir', '--upgrade',
                     '--target', SITE, *sorted(str(p) for p in (ROOT/'.whl').glob('*.whl'))], 90, 90,
         what='the carried wheels into /tmp/site (GPU only)'),
    step('env', [*BENCH, 'env', '--out', WORK/'env.json', '--mode', MODE], 60, 120, what='card, driver, torch, requirements'),
    step('data', [*BENCH, 'replica', '--src', DATA, '--dest', W['big'], '--n', P['big_n'], '--new', W['new'], '--new_n', P['new_n']], 90, 120,
         what='a larger replica (new ids) for the tables, and new patients for predict'),
    step('preprocess', [*PNB, 'preprocess', '--data', DATA, '--out', W['cache'], '--preprocess.size', S], 90, 300,
         pick=r'in the manifest', what=f'the carried real-format replica into a {S}² cache'),
    step('train', [*PNB, 'train', '--cache', W['cache'], '--out', W['train'], '--optim.epochs', P['epochs'], *COMMON], 120, 600,
         needs=['preprocess'], pick=[r'best checkpoint: AUROC', r'^time '], what=f"{P['epochs']} epoch(s); on a GPU the fast path"),
    step('evaluate', [*PNB, 'evaluate', '--ckpt', CKPT, '--cache', W['cache'], '--out', W['eval']], 120, 600,
         needs=['train'], pick=[r'^test split', r'^auroc ', r'^pointing game'], what='the test split, with Grad-CAM', group='cli'),
    step('predict', [*PNB, 'predict', '--ckpt', CKPT, W['new'], '--out', WORK/'predictions.csv', '--batch_size', P['tb']], 90, 300,
         needs=['train', 'data'], pick=[r'^predicted ', r'^time '], what='new patients (DICOM)', group='cli'),
    step('export', [*PNB, 'export', '--ckpt', CKPT, '--out', W['export']], 120, 300, needs=['train'], pick=r'checked',
         what='TorchScript and ONNX, with export\'s own parity check (CPU)', group='cli'),
    step('train_cv', [*PNB, 'train', '--cache', W['cache'], '--out', W['cv'], '--fit.cv_folds', 2, '--optim.epochs', P['epochs'], *COMMON],
         150, 900, needs=['preprocess'], pick=[r'cross-validation, per fold', r'^auroc ', r'^ensemble operating threshold'], what='2-fold cross-validation', group='cli'),
    step('tune', [*PNB, 'tune', '--cache', W['cache'], '--out', W['tune'], '--trials', P['trials'], '--epochs', P['epochs'], '--fold', 0,
                  '--seed', 0, *COMMON], 180, 1500, needs=['preprocess'], pick=[r'^study ', r'^best pooled'],
         what=f"{P['trials']} trial(s) scored on fold 0, then the best trained and reported on the test split", group='cli'),
    step('preprocess_big', [*PNB, 'preprocess', '--data', W['big'], '--out', W['bigcache'], '--preprocess.size', S,
                            '--export_folder', W['processed']], 150, 300, needs=['data'], pick=r'in the manifest',
         what="the larger replica's cache, and the original example's .npy folders", group='cli'),
    step('tta_parity', [*BENCH, 'tta-parity', '--ckpt', CKPT, '--cache', W['cache'], '--device', P['dev'], '--out', WORK/'tta_parity.json'],
         60, 120, needs=['train'], pick=r'tta parity on', what="the checkpoint under 'shift-scale' test-time augmentation on the device against the CPU", group='cli'),
    step('parity', [*BENCH, 'parity', '--export', W['export'], '--device', P['dev'], '--out', WORK/'parity.json'], 60, 120,
         needs=['export'], pick=r'parity on', what='the exported TorchScript on the device against the CPU and ONNX Runtime'),
    step('bench_a', [*BENCH, 'model', '--rows', ROWS, *REP, '--device', P['dev'], '--batch', P['tb'], '--size', S,
                     '--warmup', P['a_warm'], '--steps', P['a_steps']], 90, 300, pick='all:^row ', what='(a) the model alone'),
    step('bench_b', [*BENCH, 'ours', '--rows', ROWS, *REP, '--device', P['dev'], '--batch', P['tb'], '--cache', W['bigcache'], '--out', W['ours'],
                     '--warmup', P['b_warm']], 150, 600, needs=['preprocess_big'], pick='all:^row ', what='(b) our training path'),
    step('bench_c', [*BENCH, 'original', '--rows', ROWS, *REP, '--device', P['dev'], '--batch', P['tb'], '--size', S, '--processed', W['processed'],
                     '--warmup', P['c_warm'], '--steps', P['c_steps']], 120, 300, needs=['preprocess_big'], pick='all:^row ',
         what="(c) the original example's path"),
    step('infer_dicom', [*BENCH, 'infer-dicom', '--rows', ROWS, *REP, '--device', P['dev'], '--batch', P['tb'], '--ckpt', CKPT,
                         '--images', W['big']/'stage_2_train_images', '--n', P['dicom_n']], 120, 300, needs=['train', 'data'],
         pick='all:^row ', what='predict_files from DICOM, fp32 and bf16'),
    step('infer_cache', [*BENCH, 'infer-cache', '--rows', ROWS, *REP, '--device', P['dev'], '--batch', P['tb'], '--ckpt', CKPT,
                         '--cache', W['bigcache'], '--n', P['cache_n']], 90, 300, needs=['train', 'preprocess_big'],
         pick='all:^row ', what='from the cache, fp32 and bf16'),
    # the compiled runs last: the slowest, and the ones to lose if the budget runs out. The command's compiled run
    # trains on the larger replica at the tables' batch size, so that (b) compiled finds its kernels in the shared
    # inductor cache (TORCHINDUCTOR_CACHE_DIR) instead of compiling them again
    step('bench_a_compile', [*BENCH, 'model', '--rows', ROWS, *REP, '--device', P['dev'], '--batch', P['tb'], '--size', S, '--compile',
                             '--warmup', P['a_warm'], '--steps', P['a_steps']], 150, 1200, pick='all:^row ',
         what='(a) the model alone, compiled'),
    step('train_compile', [*PNB, 'train', '--cache', W['bigcache'], '--out', W['train_compile'], '--optim.epochs', P['epochs'],
                           '--hardware.compile', 'true', '--model.pretrained', 'none', '--optim.batch_size', P['tb']], 200, 1200,
         needs=['preprocess_big'], pick=[r'best checkpoint: AUROC', r'^time '],
         what=f"train once more with torch.compile (the larger replica, batch {P['tb']})"),
    step('bench_b_compile', [*BENCH, 'ours', '--rows', ROWS, *REP, '--device', P['dev'], '--batch', P['tb'], '--cache', W['bigcache'],
                             '--out', W['ours_compile'], '--compile', '--warmup', P['b_warm']], 200, 1500, needs=['preprocess_big'],
         pick='all:^row ', what='(b) our training path, compiled'),
]

def _env()->dict:
    e = dict(os.environ, PYTHONUNBUFFERED='1', MPLBACKEND='Agg', TORCHINDUCTOR_CACHE_DIR=str(WORK/'inductor'))
    path = ([str(SITE)] if GPU else []) + [str(ROOT)] + ([e['PYTHONPATH']] if e.get('PYTHONPATH') else [])
    e['PYTHONPATH'] = os.pathsep.join(path)
    return e

def _pick(text:str, rc:int, pattern)->str:
    lines = [l.strip() for l in re.split(r'[\r\n]+', text) if l.strip()]
    if not lines: return ''
    if rc != 0:
        for l in reversed(lines):
            if re.search(r'error|Error|Exception|Killed|FAIL|refused', l): return l[:300]
        return lines[-1][:300]
    if isinstance(pattern, str) and pattern.startswith('all:'):   # every matching line (the bench steps: one per row)
        found = [l[4:] if l.startswith('row ') else l for l in lines if re.search(pattern[4:], l)]
        return ' | '.join(found)[:300] if found else lines[-1][:300]
    found = [next((l for l in lines if re.search(p, l)), None) for p in ([pattern] if isinstance(pattern, str) else pattern or [])]
    found = [l for l in found if l]
    return '; '.join(re.sub(r'\s+', ' ', l) for l in found)[:300] if found else lines[-1][:300]

def _trim(text:str, head:int=40, tail:int=160, cap:int=200_000)->str:
    lines = text.splitlines()
    if len(lines) > head + tail: lines = lines[:head] + [f'... [{len(lines) - head - tail} lines left out] ...'] + lines[-tail:]
    s = '\n'.join(lines)
    return s if len(s) <= cap else s[:cap // 2] + '\n... [cut] ...\n' + s[-cap // 2:]

def _start(s:dict, limit:float)->dict:
    "Start a step in its own process group, its output into a file (no pipe to fill up while others run)."
    f = open(WORK/f".{s['name']}.out", 'w+b')
    job = dict(s=s, limit=limit, t=time.time(), file=f, p=None, error=None)
    try: job['p'] = subprocess.Popen(s['argv'], stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT, env=_env(), start_new_session=True)
    except OSError as e: job['error'] = f'could not start: {e}'
    return job

def _kill(p):
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try: os.killpg(p.pid, sig)
        except ProcessLookupError: pass
        try: p.wait(timeout=10); return
        except subprocess.TimeoutExpired: pass

def run_steps(jobs:list, log)->list:
    "Wait for the started steps (killing each at its own limit); write their logs in order; their records."
    timed_out = set()
    while any(j['p'] and j['p'].poll() is None for j in jobs):
        for k, j in enumerate(jobs):
            if j['p'] and j['p'].poll() is None and time.time() - j['t'] > j['limit']: _kill(j['p']); timed_out.add(k)
            if j['p'] and j['p'].poll() is not None and 'end' not in j: j['end'] = time.time()
        time.sleep(0.2)
    for j in jobs: j.setdefault('end', time.time())
    recs = []
    for k, j in enumerate(jobs):
        s, p = j['s'], j['p']
        j['file'].seek(0); text = j['file'].read().decode('utf-8', 'replace'); j['file'].close()
        if j['error']: rc, status, line = 127, 'failed', j['error']
        else:
            rc = 124 if k in timed_out else p.returncode
            status = 'timeout' if k in timed_out else 'ok' if rc == 0 else 'failed'
            line = _pick(text, rc, s['pick'])
            if status == 'timeout': line = f"timed out after {j['limit']:.0f} s; last line: {line}"
        secs = round((j.get('end') or time.time()) - j['t'], 1)
        log.write(f"\n===== {s['name']}  (limit {j['limit']:.0f} s)  {datetime.datetime.fromtimestamp(j['t']):%H:%M:%S}"
                  + (f"  [with {', '.join(x['s']['name'] for x in jobs if x is not j)}]" if len(jobs) > 1 else '')
                  + f"\n$ {shlex.join(s['argv'])}\n" + _trim(text) + f"\n----- {s['name']}: {status} (exit {rc})\n")
        recs.append(dict(rc=rc, status=status, line=line, seconds=secs))
    log.flush()
    return recs

def _jsonl(path:Path)->list:
    if not path.exists(): return []
    return [json.loads(l) for l in path.read_text().splitlines() if l.strip()]

def write_results(results:dict):
    results['env'] = json.loads((WORK/'env.json').read_text()) if (WORK/'env.json').exists() else None
    results['parity'] = json.loads((WORK/'parity.json').read_text()) if (WORK/'parity.json').exists() else None
    results['tta_parity'] = json.loads((WORK/'tta_parity.json').read_text()) if (WORK/'tta_parity.json').exists() else None
    rows = _jsonl(ROWS)
    results['throughput'] = [r for r in rows if r.get('kind') == 'train']
    results['inference'] = [r for r in rows if r.get('kind') == 'infer']
    ratios = {}
    for c in (False, True):
        a = [r['images_per_s'] for r in results['throughput'] if r['row'].startswith('(a)') and r['compile'] == c]
        b = [r['images_per_s'] for r in results['throughput'] if r['row'].startswith('(b)') and r['compile'] == c]
        if a and b: ratios['compiled' if c else 'eager'] = round(b[0] / a[0], 3)
    results['b_over_a'] = ratios
    tmp = OUT/'.gpu_results.json.tmp'; tmp.write_text(json.dumps(results, indent=1)); tmp.replace(OUT/'gpu_results.json')

def table(results:dict)->str:
    out = [f"GPU proof ({MODE} mode), {results['started']} -> {results.get('finished', '...')}, {results.get('seconds', 0):.0f} s of {BUDGET:.0f}"]
    env = results.get('env') or {}
    if env: out.append(f"{env.get('card')}  driver {env.get('driver')}  torch {env.get('torch')}  CUDA {env.get('cuda')}  Python {env.get('python')}  {env.get('cores')} cores")
    out.append(f"{'step':16} {'status':8} {'exit':>4} {'s':>6}  line")
    for s in results['steps']:
        out.append(f"{s['name']:16} {s['status']:8} {s['rc'] if s['rc'] is not None else '':>4} {s['seconds']:>6.1f}  {s['line'][:150]}")
    for r in results['throughput'] + results['inference']:
        mem = f"{r['peak_gpu_mib']:.0f} MiB" if r.get('peak_gpu_mib') is not None else '-'
        out.append(f"  {r['row'] + (' compiled' if r.get('compile') else ''):44} {r.get('precision') or '':14} {r['images_per_s']:>10.1f} img/s  peak {mem}")
    if results.get('b_over_a'): out.append(f"  b/a: {results['b_over_a']}")
    return '\n'.join(out)

def main():
    WORK.mkdir(parents=True, exist_ok=True); OUT.mkdir(parents=True, exist_ok=True)
    if ROWS.exists(): ROWS.unlink()
    for f in ('env.json', 'parity.json', 'tta_parity.json'): (WORK/f).unlink(missing_ok=True)
    t0 = time.time(); deadline = t0 + BUDGET
    results = dict(mode=MODE, started=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'), budget_s=BUDGET,
                   params=P, data=str(DATA), steps=[])
    try: results['replica'] = json.loads((DATA/'replica.json').read_text())
    except (OSError, ValueError): results['replica'] = None
    status = {}
    with open(OUT/'gpu_log.txt', 'w') as log:
        log.write(f'GPU proof, mode {MODE}, python {PY}, work {WORK}, data {DATA}, budget {BUDGET:.0f} s\n')
        k = 0
        while k < len(STEPS):
            # a run of steps with the same group starts together; each still has its own limit
            g = STEPS[k].get('group')
            batch = [STEPS[k]] if g is None else [x for x in STEPS[k:] if x.get('group') == g]
            k += len(batch)
            recs, jobs = [], []
            for s in batch:
                rec = dict(name=s['name'], what=s['what'], group=g, limit_s=None,
                           command=shlex.join(s['argv']).replace(str(ROOT) + '/', '').replace(str(WORK), 'WORK'))
                left = deadline - time.time() - RESERVE
                missing = [n for n in s['needs'] if status.get(n) != 'ok' and not (ONLY and n not in ONLY)]   # GPU_PROOF_ONLY: earlier outputs assumed
                if ONLY and s['name'] not in ONLY: rec.update(rc=None, status='skipped', seconds=0.0, line='not in GPU_PROOF_ONLY')
                elif s['name'] == 'install' and not GPU: rec.update(rc=None, status='skipped', seconds=0.0, line='CPU mode: the local environment has the packages')
                elif missing: rec.update(rc=None, status='skipped', seconds=0.0, line=f"needs {', '.join(missing)}, which did not succeed")
                elif left < 15: rec.update(rc=None, status='skipped', seconds=0.0, line=f'no time left in the {BUDGET:.0f} s budget')
                else:
                    rec['limit_s'] = round(min(s['limit'], left)); jobs.append((rec, _start(s, rec['limit_s'])))
                recs.append(rec)
            for (rec, _), r in zip(jobs, run_steps([j for _, j in jobs], log)): rec.update(r)
            for rec in recs:
                status[rec['name']] = rec['status']
                results['steps'].append(rec)
                print(f"{rec['name']:16} {rec['status']:8} {rec['seconds']:6.1f} s  {rec['line'][:160]}", flush=True)
            results['seconds'] = round(time.time() - t0, 1)
            write_results(results)
    for src, dst in ((W['eval']/'report.md', 'eval_report.md'), (W['tune']/'report.md', 'tune_report.md')):
        if src.exists(): shutil.copyfile(src, OUT/dst)
    results['finished'] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')
    results['seconds'] = round(time.time() - t0, 1)
    write_results(results)
    print('\n' + table(results))
    print(f'\nresults in {OUT}: ' + ', '.join(sorted(p.name for p in OUT.iterdir() if p.is_file())))

if __name__ == '__main__': main()
