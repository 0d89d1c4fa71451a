"""The measuring half of the GPU proof (`.ci/gpu`); each subcommand is one step that `.ci/gpu_device.py` runs in its
own process, under its own time limit.

    env                      the machine: card, driver, torch, CUDA, cores, /dev/shm, and every requirement's installed version
    replica                  a larger replica from the carried DICOMs (new patient ids written in, labels kept) [stdlib only]
    parity                   the exported TorchScript run on the device against itself on the CPU and against ONNX Runtime
    model                    throughput (a): a plain ResNet-18 with a 1-channel stem alone, bf16 autocast, channels-last
    ours                     throughput (b): `pneumonia_nb.train` end to end, timed by a callback over one epoch
    original                 throughput (c): the original example's DatasetFolder of .npy, CPU transforms, fp32
    infer-dicom, infer-cache inference images/s from DICOM files (`predict_files`) and from the cache

Only the package's top-level API is used (`from pneumonia_nb import ...`), never its submodules. Each row is appended,
as one JSON line, to --rows.
"""
import argparse, datetime, json, os, platform, random, re, shutil, statistics, subprocess, sys, time, uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LABELS_CSV, CLASSES_CSV, IMAGES_DIR = 'stage_2_train_labels.csv', 'stage_2_detailed_class_info.csv', 'stage_2_train_images'

def _append(rows, row:dict):
    row = dict(row, recorded=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'))
    with open(rows, 'a') as f: f.write(json.dumps(row) + '\n')
    mem = f", peak {row['peak_gpu_mib']:.0f} MiB" if row.get('peak_gpu_mib') is not None else ''
    print(f"row {row['row']}{' compiled' if row.get('compile') else ''} {row.get('precision')}: {row['images_per_s']:.0f} img/s{mem}", flush=True)

# %% replica (no torch: it runs before anything else)
def replica(src:Path, dest:Path, n:int, new:Path|None, new_n:int, seed:int=0):
    """`n` patients whose DICOMs are the carried files, cycled, with a fresh patient id written into each (byte for byte,
    as `90_benchmark_preprocessing` builds its full-scale replica), and the source's label and class rows under that id;
    and `new_n` more such files in `new` (patients no model has seen, for `predict`)."""
    import csv
    srcs = sorted((src/IMAGES_DIR).glob('*.dcm'))
    if not srcs: raise SystemExit(f'{src/IMAGES_DIR}: no DICOMs')
    with open(src/LABELS_CSV, newline='') as f: labels = list(csv.reader(f))
    with open(src/CLASSES_CSV, newline='') as f: classes = list(csv.reader(f))
    by = lambda rows: {r[0]: [x for x in rows[1:] if x[0] == r[0]] for r in rows[1:]}
    lab, cls = by(labels), by(classes)
    raw = [(s.stem, s.read_bytes()) for s in srcs]
    rng = random.Random(seed)
    def fresh(sid):
        if len(sid) == 36: return str(uuid.UUID(int=rng.getrandbits(128), version=4))
        return ''.join(rng.choice('0123456789abcdef') for _ in sid)
    if dest.exists(): shutil.rmtree(dest)
    (dest/IMAGES_DIR).mkdir(parents=True)
    out_l, out_c = [labels[0]], [classes[0]]
    for i in range(n):
        sid, b = raw[i % len(raw)]; pid = fresh(sid)
        assert b.count(sid.encode()) >= 1, f'{sid}: its id is not in its file'
        (dest/IMAGES_DIR/f'{pid}.dcm').write_bytes(b.replace(sid.encode(), pid.encode()))
        out_l += [[pid, *r[1:]] for r in lab[sid]]; out_c += [[pid, *r[1:]] for r in cls[sid]]
    for name, rows in ((LABELS_CSV, out_l), (CLASSES_CSV, out_c)):
        with open(dest/name, 'w', newline='') as f: csv.writer(f).writerows(rows)
    if new is not None:
        if new.exists(): shutil.rmtree(new)
        new.mkdir(parents=True)
        for i in range(new_n):
            sid, b = raw[(i * 7 + 3) % len(raw)]
            pid = fresh(sid); (new/f'{pid}.dcm').write_bytes(b.replace(sid.encode(), pid.encode()))
    gb = sum(f.stat().st_size for f in (dest/IMAGES_DIR).iterdir()) / 2**30
    print(f'replica  {n} patients ({len(raw)} source files, cycled) in {dest} ({gb:.2f} GiB)' + (f'; {new_n} new patients in {new}' if new else ''))

# %% shared helpers (torch from here on)
def _torch():
    import torch
    return torch

def _device(name:str):
    torch = _torch()
    if name == 'cuda' and not torch.cuda.is_available(): raise SystemExit('CUDA was asked for and is not available')
    return torch.device(name)

def _sync(dev):
    torch = _torch()
    if dev.type == 'cuda': torch.cuda.synchronize(dev)

def _reset_peak(dev):
    torch = _torch()
    if dev.type == 'cuda': torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats(dev)

def _peak(dev)->dict:
    torch = _torch()
    if dev.type != 'cuda': return dict(peak_gpu_mib=None, peak_gpu_reserved_mib=None)
    return dict(peak_gpu_mib=round(torch.cuda.max_memory_allocated(dev) / 2**20, 1),
                peak_gpu_reserved_mib=round(torch.cuda.max_memory_reserved(dev) / 2**20, 1))

REPEATS = 3   # timed runs of each row (--repeats)

def _rates(step, dev, warmup:int, steps:int, repeats:int|None=None)->tuple:
    "Warm up, then `repeats` timed runs of `steps` calls of `step` (each returns its image count): (median images/s, all)."
    for _ in range(warmup): step()
    rates = []
    for _ in range(repeats or REPEATS):
        _sync(dev); t = time.perf_counter(); n = 0
        for _ in range(steps): n += step()
        _sync(dev); rates.append(n / (time.perf_counter() - t))
    return statistics.median(rates), [round(r, 1) for r in rates]

def plain_resnet18():
    "torchvision's ResNet-18 with a 1-channel stem and one logit, random weights: 'the model alone'."
    import torch.nn as nn, torchvision
    m = torchvision.models.resnet18(weights=None)
    m.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    m.fc = nn.Linear(m.fc.in_features, 1)
    return m

# %% env
def env(out:Path, mode:str):
    import configparser, importlib.metadata as md
    torch = _torch()
    info = dict(mode=mode, date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'), host=platform.node(),
                cores=len(os.sched_getaffinity(0)), python=platform.python_version(), executable=sys.executable,
                torch=torch.__version__, cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                cuda_available=torch.cuda.is_available())
    try: import torchvision; info['torchvision'] = torchvision.__version__
    except Exception as e: info['torchvision'] = f'not importable: {e}'
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(card=torch.cuda.get_device_name(0), capability='.'.join(map(str, torch.cuda.get_device_capability(0))),
                    gpu_memory_gib=round(p.total_memory / 2**30, 1), gpus=torch.cuda.device_count())
    else: info['card'] = 'none (CPU)'
    try:
        r = subprocess.run(['nvidia-smi', '--query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit', '--format=csv,noheader'],
                           capture_output=True, text=True, timeout=30)
        info['nvidia_smi'] = r.stdout.strip() or r.stderr.strip()
        info['driver'] = r.stdout.split(',')[1].strip() if r.returncode == 0 and ',' in r.stdout else None
    except (OSError, subprocess.TimeoutExpired) as e: info['nvidia_smi'], info['driver'] = f'not available: {e}', None
    try: st = os.statvfs('/dev/shm'); info['dev_shm_free_gib'] = round(st.f_bavail * st.f_frsize / 2**30, 2)
    except OSError: info['dev_shm_free_gib'] = None
    try: info['mem_total_gib'] = round(os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30, 1)
    except (ValueError, OSError): pass
    # every requirement of settings.ini: installed version, and whether it satisfies the range
    from packaging.requirements import Requirement
    cfg = configparser.ConfigParser(); cfg.read(ROOT/'settings.ini')
    reqs, bad = [], []
    for r in cfg['DEFAULT']['requirements'].split():
        req = Requirement(r)
        try: v = md.version(req.name)
        except md.PackageNotFoundError: v = None
        ok = v is not None and req.specifier.contains(v, prereleases=True)
        try: where = str(Path(md.distribution(req.name).locate_file('')).resolve()) if v else None
        except Exception: where = None
        reqs.append(dict(requirement=r, installed=v, satisfied=ok, carried=bool(where and where.startswith('/tmp/site'))))
        if not ok: bad.append(f'{r} (installed: {v})')
    # and what the carried wheels need in turn (kornia: torch>=2.5.1, alembic: typing-extensions>=4.12, ...)
    try: carried = [c['name'] for c in json.loads((ROOT/'.whl'/'wheels.json').read_text())['carried']]
    except (OSError, ValueError, KeyError): carried = []
    env_m = dict(extra='')
    for name in carried:
        try: needs = md.requires(name) or []
        except md.PackageNotFoundError: bad.append(f'{name} (carried) is not installed'); continue
        for d in needs:
            req = Requirement(d)
            if req.marker is not None and ('extra' in str(req.marker) or not req.marker.evaluate(env_m)): continue
            try: v = md.version(req.name)
            except md.PackageNotFoundError: v = None
            if v is None or not req.specifier.contains(v, prereleases=True): bad.append(f'{d}, needed by {name} (installed: {v})')
    info['carried'] = carried
    info['requirements'], info['unsatisfied'] = reqs, bad
    try:
        import pneumonia_nb; info['pneumonia_nb'] = pneumonia_nb.__version__
    except Exception as e: info['pneumonia_nb'] = f'not importable: {e}'
    out.write_text(json.dumps(info, indent=1))
    drv = f", driver {info['driver']}" if info.get('driver') else ''
    print(f"{info['card']}{drv}, torch {info['torch']} (CUDA {info['cuda']}), Python {info['python']}, {info['cores']} cores, "
          f"/dev/shm {info['dev_shm_free_gib']} GiB free; requirements: " + ('all satisfied' if not bad else 'NOT satisfied: ' + '; '.join(bad)))
    if bad or (mode == 'gpu' and not torch.cuda.is_available()): sys.exit(1)

# %% parity
def parity(export:Path, dev, out:Path|None):
    "The exported TorchScript on `dev` against itself on the CPU and against ONNX Runtime (CPU), fp32, on fresh random images."
    torch = _torch()
    contract = json.loads((export/'contract.json').read_text()); size = contract['size']
    x = torch.randint(0, 256, (8, 1, size, size), generator=torch.Generator().manual_seed(int(time.time()))).float()
    cpu = torch.jit.load(str(export/'model.pt'), map_location='cpu').eval()
    with torch.no_grad(): ref = [t.double() for t in cpu(x)]
    res = dict(size=size, batch=len(x), device=str(dev))
    diff = lambda got: max(float((g.double().cpu() - r).abs().max()) for g, r in zip(got, ref))
    on_dev = torch.jit.load(str(export/'model.pt'), map_location=dev).eval()
    tf32 = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    for name, allow in (('strict_fp32', False), ('tf32_allowed', True)):
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = allow
        with torch.no_grad(): got = on_dev(x.to(dev))
        res[f'torchscript_{dev.type}_vs_cpu_{name}'] = diff(got)
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        import onnxruntime as ort
        res['onnxruntime_providers'] = ort.get_available_providers()
        for prov in ['CPUExecutionProvider'] + (['CUDAExecutionProvider'] if 'CUDAExecutionProvider' in ort.get_available_providers() else []):
            sess = ort.InferenceSession(str(export/'model.onnx'), providers=[prov])
            res[f'onnx_{prov[:-17].lower()}_vs_torchscript_cpu'] = diff([torch.from_numpy(o) for o in sess.run(None, {'image': x.numpy()})])
    except Exception as e: res['onnx_error'] = f'{type(e).__name__}: {e}'
    checked = {k: v for k, v in res.items() if k.endswith(('_vs_cpu_strict_fp32', '_vs_torchscript_cpu'))}
    worst = max(checked.values()) if checked else float('nan')
    res['pass'] = bool(checked) and worst <= 1e-3 and 'onnx_error' not in res
    if out: out.write_text(json.dumps(res, indent=1))
    print(f"parity on {dev}: max |difference| (probability, logit) " + ', '.join(f'{k} {v:.1e}' for k, v in res.items() if k.endswith(('fp32', 'allowed', '_cpu')))
          + f" -> {'pass' if res['pass'] else 'FAIL'} (limit 1e-3, as export's own check)")
    if not res['pass']: sys.exit(1)

# %% throughput (a): the model alone
def model_alone(rows, dev, batch:int, size:int, compile:bool, warmup:int, steps:int):
    torch = _torch(); import torch.nn.functional as F
    torch.manual_seed(0)
    m = plain_resnet18().to(dev).to(memory_format=torch.channels_last).train()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=1e-4)
    fwd = torch.compile(m) if compile else m
    pw = torch.tensor(3.0, device=dev)
    xs = [torch.randn(batch, 1, size, size, device=dev).contiguous(memory_format=torch.channels_last) for _ in range(4)]
    ys = [torch.randint(0, 2, (batch,), device=dev).float() for _ in range(4)]
    i = [0]
    def step():
        k = i[0] % 4; i[0] += 1
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            loss = F.binary_cross_entropy_with_logits(fwd(xs[k])[:, 0].float(), ys[k], pos_weight=pw)
        opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
        return batch
    _reset_peak(dev); t = time.time()
    for _ in range(max(2, warmup // 2)): step()   # the first steps (and compilation) outside the timing
    first = time.time() - t
    rate, runs = _rates(step, dev, warmup, steps)
    _append(rows, dict(kind='train', row='(a) model alone', compile=compile, precision='bf16 autocast', memory_format='channels-last',
                       optimizer='AdamW', batch=batch, size=size, steps=steps, images_per_s=round(rate, 1), runs=runs,
                       first_steps_s=round(first, 1), device=str(dev), **_peak(dev),
                       what='torchvision ResNet-18 (1-channel stem, 1 logit), random tensors already on the device (4 batches rotated), forward+backward+AdamW step'))

# %% throughput (b): our training path end to end
def ours(rows, dev, cache:Path, out:Path, batch:int, compile:bool, warm:int):
    import pytorch_lightning as pl
    torch = _torch()
    from pneumonia_nb import train, recipe

    class Timer(pl.Callback):
        "Images/s over the training batches of the last epoch after `warm` of them; and what path the run took."
        def __init__(self): self.t0 = self.t1 = None; self.n = 0; self.facts = {}
        def on_train_start(self, trainer, pl_module):
            f = self.facts
            f['precision'] = str(trainer.precision)
            f['channels_last'] = any(p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous() for p in pl_module.parameters())
            f['compiled'] = any(type(m).__name__ == 'OptimizedModule' or getattr(m, '_compiled_call_impl', None) is not None
                                for m in pl_module.modules())   # torch.compile(m) or m.compile()
            f['batch_transform'] = type(getattr(pl_module, 'batch_transform', None)).__name__
            try: f['train_loader'] = type(trainer.train_dataloader).__name__
            except Exception as e: f['train_loader'] = f'? ({type(e).__name__})'
            f['device'] = str(pl_module.device)
        def _last_epoch(self, trainer): return trainer.current_epoch == trainer.max_epochs - 1
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if not self._last_epoch(trainer): return
            if batch_idx == warm - 1: _sync(dev); self.t0 = time.perf_counter(); return
            if batch_idx >= warm:
                self.n += len(batch[0]) if isinstance(batch, (tuple, list)) else len(batch)
                if batch_idx == trainer.num_training_batches - 1: _sync(dev); self.t1 = time.perf_counter()
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == 0 and 'batch_device' not in self.facts:
                x = batch[0] if isinstance(batch, (tuple, list)) else batch
                self.facts['batch_device'], self.facts['batch_dtype'] = str(x.device), str(x.dtype)

    warm = max(1, warm); timer = Timer()
    if out.exists(): shutil.rmtree(out)
    _reset_peak(dev); t = time.time()
    accel = 'gpu' if dev.type == 'cuda' else 'cpu'
    res = train(cache, out, recipe('default'), progress=False, log_images=False, callbacks=[timer], epochs=2, batch_size=batch,
                pretrained='none', compile=compile, accelerator=accel)
    wall = time.time() - t
    if timer.t1 is None: raise SystemExit(f'the timed epoch did not finish (batches per epoch < {warm + 1}?)')
    rate = timer.n / (timer.t1 - timer.t0)
    cfg = res.config
    _append(rows, dict(kind='train', row='(b) ours, end to end', compile=compile, precision=timer.facts.get('precision'),
                       memory_format='channels-last' if timer.facts.get('channels_last') else 'contiguous', optimizer=cfg.optim.optimizer,
                       batch=batch, size=None, steps=None, timed_images=timer.n, images_per_s=round(rate, 1), runs=[round(rate, 1)],
                       wall_s=round(wall, 1), device=str(dev), path=timer.facts, **_peak(dev),
                       val_auroc=float(res.metrics.get('val/auroc', float('nan'))),
                       what='pneumonia_nb.train (default recipe, random weights, 2 epochs, as the CLI runs it): training batches of '
                            f'the second epoch after the first {warm}, timed by a Lightning callback (data, augmentation, step, logging)'))
    print(f"path: {timer.facts}")

# %% throughput (c): the original example's path
def _load_float(path):
    import numpy as np
    return np.load(path).astype(np.float32)

def original(rows, dev, processed:Path, batch:int, size:int, warmup:int, steps:int, workers:int):
    torch = _torch(); import torch.nn.functional as F, torchvision
    from torchvision import transforms as T
    tfm = T.Compose([T.ToTensor(), T.Normalize(0.49, 0.248),
                     T.RandomAffine(degrees=(-5, 5), translate=(0, 0.05), scale=(0.9, 1.1)),
                     T.RandomResizedCrop((size, size), scale=(0.35, 1))])
    ds = torchvision.datasets.DatasetFolder(str(processed/'train'), loader=_load_float, extensions=('npy',), transform=tfm)
    # the workers' batches travel through /dev/shm: fewer of them where it is small
    try: st = os.statvfs('/dev/shm'); shm = st.f_bavail * st.f_frsize
    except OSError: shm = None
    per_batch = batch * size * size * 4
    if shm is not None and workers * 2 * per_batch > shm / 2: workers = max(1, int(shm / 2 // (2 * per_batch)))
    dl = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, pin_memory=dev.type == 'cuda',
                                     drop_last=True, persistent_workers=workers > 0)
    torch.manual_seed(0)
    m = plain_resnet18().to(dev).train()
    opt = torch.optim.Adam(m.parameters(), lr=1e-4)
    pw = torch.tensor(3.0, device=dev)
    def batches():
        while True: yield from dl
    it = batches()
    def step():
        x, y = next(it)
        x, y = x.to(dev, non_blocking=True), y.to(dev).float()
        loss = F.binary_cross_entropy_with_logits(m(x)[:, 0], y, pos_weight=pw)
        opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
        return len(y)
    _reset_peak(dev)
    rate, runs = _rates(step, dev, warmup, steps)
    _append(rows, dict(kind='train', row="(c) original example's path", compile=False, precision='fp32', memory_format='contiguous',
                       optimizer='Adam', batch=batch, size=size, steps=steps, images_per_s=round(rate, 1), runs=runs, workers=workers,
                       files=len(ds), device=str(dev), **_peak(dev),
                       what='one float16 .npy per image read by torchvision DatasetFolder in DataLoader workers, ToTensor, Normalize, '
                            'RandomAffine, RandomResizedCrop on the CPU, fp32 forward+backward+Adam step'))

# %% inference
def infer_dicom(rows, dev, ckpt:Path, images:Path, n:int, batch:int):
    torch = _torch()
    from pneumonia_nb import predict_files
    files = sorted(images.glob('*.dcm'))[:n]
    for prec in ('fp32', 'bf16'):
        ctx = (lambda: torch.autocast(dev.type, dtype=torch.bfloat16)) if prec == 'bf16' else (lambda: _nullcontext())
        res = {}
        def run():
            with ctx(): r = predict_files(ckpt, files, batch_size=batch, device=str(dev), progress=False)
            if len(r.predictions) != len(files) or r.failed: raise SystemExit(f'{len(r.predictions)} predictions of {len(files)}; failed {r.failed[:3]}')
            res['device'] = r.device
            return len(files)
        _reset_peak(dev)
        rate, all_runs = _rates(run, dev, 1, 1)
        _append(rows, dict(kind='infer', row='DICOM files (decoding included)', precision=prec, batch=batch, images=len(files),
                           images_per_s=round(rate, 1), runs=all_runs, device=res.get('device'), **_peak(dev),
                           what='predict_files on the files as `pneumonia_nb predict` runs it: checkpoint load, decoding in its '
                                'DataLoader workers (default: one per core, up to 8), normalisation, forward' + (', under bf16 autocast' if prec == 'bf16' else '')))

class _nullcontext:
    def __enter__(self): return self
    def __exit__(self, *a): return False

def infer_cache(rows, dev, ckpt:Path, cache:Path, n:int, batch:int):
    import numpy as np
    torch = _torch()
    from pneumonia_nb import load_classifier, load_manifest
    from pneumonia_nb.config import normalise
    model, contract = load_classifier(ckpt, map_location=str(dev))
    model.eval()
    paths = list(load_manifest(cache).path)[:n]
    held = torch.from_numpy(np.stack([np.load(p) for p in paths]))
    if dev.type == 'cuda': held = held.pin_memory()
    size = held.shape[-1]
    def forward(x_uint8):
        x = normalise(x_uint8.to(dev, non_blocking=True)[:, None], contract.mean, contract.std)
        return torch.sigmoid(model(x).float()).cpu()
    def from_files():
        for i in range(0, len(paths), batch): forward(torch.from_numpy(np.stack([np.load(p) for p in paths[i:i + batch]])))
        return len(paths)
    def from_memory():
        for i in range(0, len(paths), batch): forward(held[i:i + batch])
        return len(paths)
    xn = torch.randn(batch, 1, size, size, device=dev)
    def model_only():
        for i in range(0, len(paths), batch): model(xn[:min(batch, len(paths) - i)]).float().cpu()
        return len(paths)
    what = {'cache (np.load per batch)': 'the uint8 arrays of the cache read with np.load, stacked, to the device, normalised, forward, probabilities back: one process',
            'cache (arrays already in memory)': 'the same arrays held in pinned host memory: transfer, normalise, forward, probabilities back',
            'model only': 'the forward pass alone on a normalised batch already on the device'}
    for prec in ('fp32', 'bf16'):
        for name, fn in (('cache (np.load per batch)', from_files), ('cache (arrays already in memory)', from_memory), ('model only', model_only)):
            def run():
                with torch.inference_mode(), (torch.autocast(dev.type, dtype=torch.bfloat16) if prec == 'bf16' else _nullcontext()): return fn()
            _reset_peak(dev)
            rate, all_runs = _rates(run, dev, 1, 1)
            _append(rows, dict(kind='infer', row=name, precision=prec, batch=batch, images=len(paths), size=size,
                               images_per_s=round(rate, 1), runs=all_runs, device=str(dev), **_peak(dev), what=what[name]))

# %% test-time augmentation: the same probabilities on the CPU and the device
def tta_parity(ckpt:Path, cache:Path, dev, out:Path|None, n:int=32):
    "The checkpoint's classifier under 'shift-scale' test-time augmentation on `dev` against the CPU, strict fp32, on `n` cached images."
    import dataclasses, numpy as np
    torch = _torch()
    from pneumonia_nb import load_classifier, load_manifest
    from pneumonia_nb.config import normalise
    from pneumonia_nb.model import single_view
    paths = list(load_manifest(cache).path)[:n]
    x8 = torch.from_numpy(np.stack([np.load(p) for p in paths]))
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    got = {}
    for where in ('cpu', str(dev)):
        model, contract = load_classifier(ckpt, map_location=where)
        model.eval(); model.contract = dataclasses.replace(model.contract, tta='shift-scale')
        x = normalise(x8.float()[:, None], contract.mean, contract.std).to(where)
        with torch.no_grad():
            tta = model(x).double().cpu()
            with single_view(model): one = model(x).double().cpu()
        got[where] = (tta, one)
    (tc, oc), (td, od) = got['cpu'], got[str(dev)]
    res = dict(device=str(dev), images=len(paths), size=int(x8.shape[-1]),
               tta_probability_vs_cpu=float((torch.sigmoid(td) - torch.sigmoid(tc)).abs().max()),
               tta_logit_vs_cpu=float((td - tc).abs().max()),
               single_view_probability_vs_cpu=float((torch.sigmoid(od) - torch.sigmoid(oc)).abs().max()),
               tta_vs_single_view_probability_cpu=float((torch.sigmoid(tc) - torch.sigmoid(oc)).abs().max()))
    res['pass'] = res['tta_probability_vs_cpu'] <= 1e-3
    if out: out.write_text(json.dumps(res, indent=1))
    print(f"tta parity on {dev}: {len(paths)} images at {res['size']}², max |difference| device vs CPU: probability "
          f"{res['tta_probability_vs_cpu']:.1e} (logit {res['tta_logit_vs_cpu']:.1e}) with shift-scale views, "
          f"{res['single_view_probability_vs_cpu']:.1e} without; the views move probabilities by up to "
          f"{res['tta_vs_single_view_probability_cpu']:.3f} -> {'pass' if res['pass'] else 'FAIL'} (limit 1e-3)")
    if not res['pass']: sys.exit(1)

# %% main
def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest='cmd', required=True)
    p = sub.add_parser('env'); p.add_argument('--out', type=Path, required=True); p.add_argument('--mode', default='gpu')
    p = sub.add_parser('replica'); p.add_argument('--src', type=Path, required=True); p.add_argument('--dest', type=Path, required=True)
    p.add_argument('--n', type=int, required=True); p.add_argument('--new', type=Path); p.add_argument('--new_n', type=int, default=64)
    p = sub.add_parser('parity'); p.add_argument('--export', type=Path, required=True); p.add_argument('--device', default='cuda'); p.add_argument('--out', type=Path)
    p = sub.add_parser('tta-parity'); p.add_argument('--ckpt', type=Path, required=True); p.add_argument('--cache', type=Path, required=True)
    p.add_argument('--device', default='cuda'); p.add_argument('--out', type=Path); p.add_argument('--n', type=int, default=32)
    for name in ('model', 'ours', 'original', 'infer-dicom', 'infer-cache'):
        p = sub.add_parser(name); p.add_argument('--rows', type=Path, required=True); p.add_argument('--device', default='cuda')
        p.add_argument('--batch', type=int, default=256); p.add_argument('--size', type=int, default=224)
        p.add_argument('--compile', action='store_true'); p.add_argument('--warmup', type=int, default=10); p.add_argument('--steps', type=int, default=50)
        p.add_argument('--cache', type=Path); p.add_argument('--out', type=Path); p.add_argument('--processed', type=Path)
        p.add_argument('--workers', type=int, default=min(16, len(os.sched_getaffinity(0))))
        p.add_argument('--ckpt', type=Path); p.add_argument('--images', type=Path); p.add_argument('--n', type=int, default=4096)
        p.add_argument('--repeats', type=int, default=3)
    a = ap.parse_args()
    if a.cmd == 'env': return env(a.out, a.mode)
    if a.cmd == 'replica': return replica(a.src, a.dest, a.n, a.new, a.new_n)
    dev = _device(a.device)
    global REPEATS; REPEATS = getattr(a, 'repeats', 3)
    if a.cmd == 'parity': return parity(a.export, dev, a.out)
    if a.cmd == 'tta-parity': return tta_parity(a.ckpt, a.cache, dev, a.out, a.n)
    if a.cmd == 'model': return model_alone(a.rows, dev, a.batch, a.size, a.compile, a.warmup, a.steps)
    if a.cmd == 'ours': return ours(a.rows, dev, a.cache, a.out, a.batch, a.compile, a.warmup)
    if a.cmd == 'original': return original(a.rows, dev, a.processed, a.batch, a.size, a.warmup, a.steps, a.workers)
    if a.cmd == 'infer-dicom': return infer_dicom(a.rows, dev, a.ckpt, a.images, a.n, a.batch)
    if a.cmd == 'infer-cache': return infer_cache(a.rows, dev, a.ckpt, a.cache, a.n, a.batch)

if __name__ == '__main__': main()
