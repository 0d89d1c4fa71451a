__version__ = "0.1.0"

# The Python API users see first, and the module each name lives in. Each name is imported on first use, so
# `import pneumonia_nb` (and the command line's --help) does not import torch. The command line finds its stages here.
# `tune` names a module and the function in it: Python's import system serves the module (`pneumonia_nb.tune`), and
# the function is `pneumonia_nb.tune.tune`, so `from pneumonia_nb import tune` always gives the same thing.
STAGES = dict(RunConfig='config', recipe='config', load_config='config', save_config='config',
              make_demo_dataset='demo', preprocess='cache', load_manifest='cache', cache_settings='cache', export_folder='cache',
              train='training', cross_validate='training', evaluate='evaluation', evaluate_dataset='evaluation',
              load_classifier='checkpoints', load_model='checkpoints', load_ensemble='checkpoints', checkpoint_files='checkpoints',
              EnsembleContract='checkpoints', ENSEMBLE_FILE='checkpoints', predict_files='inference', export_model='inference',
              tune='tune', parse_space='tune')

def __getattr__(name):
    if name in STAGES and STAGES[name] != name:   # a name that is also its module's is the module
        import importlib
        return getattr(importlib.import_module(f'{__name__}.{STAGES[name]}'), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

def __dir__(): return sorted([*globals(), *(n for n, m in STAGES.items() if m != n)])
