"""Prepare, on this machine, what the GPU proof (`.ci/gpu`) needs on the device machine.

    python .ci/gpu_prepare.py wheels             # .whl/: wheels of the requirements the device lacks
    python .ci/gpu_prepare.py replica DEST [--n N] [--seed S]   # N real-format challenge DICOMs with their labels
    python .ci/gpu_prepare.py size               # what the run tool would send, against its 64 MiB limit
    python .ci/gpu_prepare.py call               # the exact run-tool call

Standard library only (and `packaging`, which pip itself vendors), so that it runs before the package is installed.
Nothing here is imported from `pneumonia_nb`.
"""
import argparse, configparser, csv, glob, json, os, random, re, shutil, subprocess, sys, zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WHL = ROOT/'.whl'
DEVICE_DATA = ROOT/'.device'/'data'
CARRY = ['.whl', '.device/data']
LIMIT_MIB, MARGIN_MIB = 64, 6            # the run tool's limit; room left for the checkout to grow before the call
RUN_TIMEOUT_S = 560                      # the device script stops by itself well before (GPU_PROOF_BUDGET_S, 470 s)
DEVICE_COMMAND = 'bash .ci/gpu device'

# The device's Python packages, as /work/.library/device/KINDS.md lists them (read from there when it is present).
KINDS_MD = Path('/work/.library/device/KINDS.md')
DEVICE_PACKAGES_FALLBACK = """absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder cuda-toolkit
cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools formulaic frozenlist fsspec
gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax
jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities
linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack
multidict multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro nvidia-cublas
nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand
nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13
nvidia-nvtx onnx onnx-ir onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix
orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client propcache protobuf psutil
pyarrow pybind11 py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock
pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors
scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham
simplejson six sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl
tifffile tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm
transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray
xxhash yarl zipp""".split()
# versions seen there (KINDS.md, 'pip list, as a session saw it'); the device script checks every one itself
DEVICE_VERSIONS = dict(torch='2.11.0', torchvision='0.26.0', pytorch_lightning='2.6.6', torchmetrics='1.9.0', numpy='2.5.2',
                       onnx='1.23.1', onnxruntime='1.30.0', onnxscript='0.7.2', python='3.12.3')
# the device's interpreter, for wheel selection and environment markers
TARGET_ENV = dict(python_version='3.12', python_full_version='3.12.3', implementation_name='cpython',
                  platform_python_implementation='CPython', sys_platform='linux', platform_system='Linux',
                  platform_machine='x86_64', os_name='posix', platform_release='', platform_version='', extra='')
PLATFORMS = ['manylinux_2_28_x86_64', 'manylinux_2_27_x86_64', 'manylinux_2_17_x86_64', 'manylinux2014_x86_64',
             'manylinux1_x86_64', 'manylinux_2_24_x86_64', 'manylinux_2_31_x86_64', 'manylinux_2_34_x86_64', 'manylinux_2_35_x86_64']

def norm(name:str)->str: return re.sub(r'[-_.]+', '-', name).lower()

def device_packages()->set:
    try:
        text = KINDS_MD.read_text()
        m = re.search(r'^nvidia-h200:.*?Packages: (.*?)\.\s*$', text, re.M | re.S)
        if m: return {norm(p.strip()) for p in m.group(1).split(',') if p.strip()}
    except OSError: pass
    return {norm(p) for p in DEVICE_PACKAGES_FALLBACK}

def requirements()->list:
    cfg = configparser.ConfigParser(); cfg.read(ROOT/'settings.ini')
    return cfg['DEFAULT']['requirements'].split()

# %% wheels
def _pip_download(spec:str, dest:Path)->Path|None:
    plat = [a for p in PLATFORMS for a in ('--platform', p)]
    before = set(dest.glob('*.whl'))
    r = subprocess.run([sys.executable, '-m', 'pip', 'download', '-q', '--no-deps', '--only-binary=:all:', '--python-version', '3.12',
                        '--implementation', 'cp', *plat, '-d', str(dest), spec], capture_output=True, text=True)
    if r.returncode: print(f'  pip download {spec}: failed: {r.stderr.strip().splitlines()[-1:]}'); return None
    new = set(dest.glob('*.whl')) - before
    name = norm(re.split(r'[<>=!~ ;\[]', spec)[0])
    found = new or {w for w in dest.glob('*.whl') if norm(w.name.split('-')[0]) == name}
    return sorted(found)[-1] if found else None

def _metadata(whl:Path)->tuple:
    with zipfile.ZipFile(whl) as z:
        meta = z.read(next(n for n in z.namelist() if n.endswith('.dist-info/METADATA'))).decode()
    name = re.search(r'^Name: (.+)$', meta, re.M).group(1).strip()
    version = re.search(r'^Version: (.+)$', meta, re.M).group(1).strip()
    return name, version, re.findall(r'^Requires-Dist: (.+)$', meta, re.M)

def _local_version(name:str)->str|None:
    "The version installed in this interpreter (the one the CPU mode tested), if any."
    from importlib import metadata
    try: return metadata.version(name)
    except metadata.PackageNotFoundError: return None

def wheels():
    from packaging.requirements import Requirement
    have = device_packages()
    WHL.mkdir(exist_ok=True)
    todo = [(Requirement(r), 'settings.ini') for r in requirements()]
    report = dict(device_has=[], carried=[], unsatisfiable=[])
    done = {}
    while todo:
        req, why = todo.pop(0)
        if req.marker is not None and not req.marker.evaluate(TARGET_ENV): continue
        n = norm(req.name)
        if n in done: continue
        if n in have:
            v = DEVICE_VERSIONS.get(n.replace('-', '_'))
            ok = None if v is None else req.specifier.contains(v, prereleases=True)
            report['device_has'].append(dict(requirement=str(req), device_version=v, satisfied=ok))
            if ok is False: report['unsatisfiable'].append(f'{req} (device has {v})')
            done[n] = None; continue
        local = _local_version(req.name)
        spec = f'{req.name}=={local}' if local and req.specifier.contains(local, prereleases=True) else str(req).split(';')[0]
        print(f'  {n}: {spec}  (needed by {why})')
        whl = _pip_download(spec, WHL) or (None if spec == str(req) else _pip_download(str(req).split(';')[0], WHL))
        if whl is None: report['unsatisfiable'].append(f'{req}: no py3.12 manylinux x86_64 wheel'); done[n] = None; continue
        name, version, deps = _metadata(whl)
        done[n] = whl.name
        report['carried'].append(dict(name=name, version=version, file=whl.name, bytes=whl.stat().st_size, needed_by=why))
        for d in deps:
            r = Requirement(d)
            if r.marker is not None and 'extra' in str(r.marker): continue
            todo.append((r, name))
    keep = {f for f in done.values() if f}
    for w in WHL.glob('*.whl'):
        if w.name not in keep: print(f'  removing {w.name} (not needed, or another version)'); w.unlink()
    report['total_bytes'] = sum(c['bytes'] for c in report['carried'])
    (WHL/'wheels.json').write_text(json.dumps(report, indent=1))
    print(f"wheels: {len(report['carried'])} in {WHL} ({report['total_bytes']/2**20:.1f} MiB): "
          + ', '.join(f"{c['name']} {c['version']}" for c in report['carried']))
    for u in report['unsatisfiable']: print(f'  NOT SATISFIABLE on the device: {u}')
    return report

# %% replica
LABELS_CSV, CLASSES_CSV, IMAGES_DIR = 'stage_2_train_labels.csv', 'stage_2_detailed_class_info.csv', 'stage_2_train_images'

def shared_rsna_dev()->Path|None:
    for base in (os.environ.get('PNEUMONIA_NB_DATA'), ROOT.parent/'shared'/'data', Path('/work/shared/data')):
        if base and (Path(base)/'rsna-dev'/LABELS_CSV).exists(): return Path(base)/'rsna-dev'
    return None

def _rows(path:Path)->list:
    with open(path, newline='') as f: return list(csv.reader(f))

def replica(dest:Path, n:int, seed:int=0)->dict:
    """`n` real challenge DICOMs of `rsna-dev` with their own label and class rows, sampled by class (seeded); the files
    are copied unchanged. Without rsna-dev, the package's generated demo dataset (same layout) instead."""
    dest = Path(dest); src = shared_rsna_dev()
    if dest.exists(): shutil.rmtree(dest)
    if src is None:
        print(f'rsna-dev not found: writing the generated demo dataset ({n} patients, 1024²) instead')
        subprocess.run([sys.executable, '-m', 'pneumonia_nb', '-q', 'demo', '--out', str(dest), '--demo.n', str(n)], check=True, cwd=ROOT)
        info = dict(source='demo (generated)', n=n)
    else:
        labels, classes = _rows(src/LABELS_CSV), _rows(src/CLASSES_CSV)
        target = {}
        for r in labels[1:]: target[r[0]] = int(r[5])
        pos = sorted(p for p, t in target.items() if t == 1); neg = sorted(p for p, t in target.items() if t == 0)
        rng = random.Random(seed)
        k_pos = round(n * len(pos) / len(target))
        keep = set(rng.sample(pos, min(k_pos, len(pos))) + rng.sample(neg, min(n - k_pos, len(neg))))
        (dest/IMAGES_DIR).mkdir(parents=True)
        for name, rows in ((LABELS_CSV, labels), (CLASSES_CSV, classes)):
            with open(dest/name, 'w', newline='') as f:
                csv.writer(f).writerows([rows[0]] + [r for r in rows[1:] if r[0] in keep])
        for p in sorted(keep): shutil.copyfile(src/IMAGES_DIR/f'{p}.dcm', dest/IMAGES_DIR/f'{p}.dcm')
        info = dict(source=str(src), n=len(keep), positives=sum(target[p] for p in keep), seed=seed)
    info['bytes'] = sum(f.stat().st_size for f in dest.rglob('*') if f.is_file())
    (dest/'replica.json').write_text(json.dumps(info, indent=1))
    print(f"replica: {info['n']} patients from {info['source']} in {dest} ({info['bytes']/2**20:.1f} MiB)")
    return info

# %% size
def _tree_bytes()->tuple:
    "Bytes of what the run tool sends: tracked and untracked-not-ignored files (and shared/), plus the carried paths."
    out = subprocess.run(['git', 'ls-files', '-z', '-co', '--exclude-standard'], capture_output=True, cwd=ROOT, check=True).stdout
    files = {ROOT/f for f in out.decode().split('\0') if f}
    if (ROOT/'shared').is_dir(): files |= {p for p in (ROOT/'shared').rglob('*') if p.is_file()}
    tree = sum(f.stat().st_size for f in files if f.is_file() and not f.is_symlink())
    carried = {c: sum(f.stat().st_size for f in (ROOT/c).rglob('*') if f.is_file()) if (ROOT/c).exists() else 0 for c in CARRY}
    return tree, carried

def size(quiet=False)->float:
    tree, carried = _tree_bytes()
    total = (tree + sum(carried.values())) / 2**20
    if not quiet:
        print(f'carried size: working tree {tree/2**20:.1f} MiB + ' + ' + '.join(f'{c} {b/2**20:.1f} MiB' for c, b in carried.items())
              + f' = {total:.1f} MiB of the {LIMIT_MIB} MiB limit')
    return total

def call()->str:
    missing = [c for c in CARRY if not (ROOT/c).exists()]
    if missing: raise SystemExit(f'missing {missing}: run `.ci/gpu prepare` first')
    s = json.dumps(dict(command=DEVICE_COMMAND, carry=CARRY, timeout_s=RUN_TIMEOUT_S))
    print(f'the run-tool call (from the root of the checkout the session started in):\n  run {s}')
    return s

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest='cmd', required=True)
    sub.add_parser('wheels')
    r = sub.add_parser('replica'); r.add_argument('dest'); r.add_argument('--n', type=int, default=256); r.add_argument('--seed', type=int, default=0)
    sub.add_parser('size'); sub.add_parser('call')
    a = ap.parse_args()
    if a.cmd == 'wheels': rep = wheels(); sys.exit(1 if rep['unsatisfiable'] else 0)
    if a.cmd == 'replica': replica(Path(a.dest), a.n, a.seed)
    if a.cmd == 'size':
        total = size()
        if total > LIMIT_MIB - MARGIN_MIB: sys.exit(f'too large: {total:.1f} MiB, over {LIMIT_MIB} MiB less a {MARGIN_MIB} MiB margin')
    if a.cmd == 'call': call()

if __name__ == '__main__': main()
