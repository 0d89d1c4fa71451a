__version__ = "0.1.0"

# The Python API users see first. Each name is imported on first use, so `import pneumonia_nb` (and the
# command line's --help) does not import torch.
_API = dict(RunConfig='config', recipe='config', load_config='config', save_config='config',
            make_demo_dataset='demo', preprocess='cache', load_manifest='cache',
            train='training', cross_validate='training', evaluate='evaluation', evaluate_dataset='evaluation',
            load_classifier='checkpoints', load_model='checkpoints', load_ensemble='checkpoints', predict_files='inference',
            export_model='inference', export_folder='cache', checkpoint_files='checkpoints',
            EnsembleContract='checkpoints', ENSEMBLE_FILE='checkpoints', tune='tune', parse_space='tune')

def __getattr__(name):
    if name in _API:
        import importlib
        return getattr(importlib.import_module(f'{__name__}.{_API[name]}'), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

def __dir__(): return sorted([*globals(), *_API])
