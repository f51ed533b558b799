"""cggmlib: Classifier-guided Gradient Modulation (Guo et al., NeurIPS 2024) and its baselines,
in one training loop with pluggable strategies.

    import cggmlib as cg
    cfg = cg.Config(dataset="synthetic", strategy="cggm")
    data = cg.load_data(cfg.dataset, cfg.data_root, batch_size=cfg.batch_size, seed=cfg.seed)
    model = cg.build_model(cfg.dataset, data, cfg.preset)
    result = cg.train(model, cg.make_strategy(cfg.strategy, **cfg.strategy_kwargs), data, cfg)
"""
from . import metrics, runs, tasks
from .config import Config
from .data import DATASETS, Batch, Data, load_data
from .errors import CGGMError, ConfigError, DataError, NumericsError, ResultsError
from .experiment import run_experiment
from .models import MODELS, MultimodalModel, Output, build_model
from .options import check_parameters
from .modulation import CGGM, STRATEGIES, Strategy, make_strategy
from .runs import load_run, save_run, seed_everything
from .training.trace import Trace
from .training.protocol import TrainResult, evaluate, evaluate_classifiers
from .train import train

__version__ = "0.1.0"


def __getattr__(name):  # figures import seaborn/matplotlib (seconds): load them on first use
    if name == "figures":
        import importlib

        return importlib.import_module(".analysis.figures", __name__)
    raise AttributeError(f"module 'cggmlib' has no attribute {name!r}")

__all__ = ["Batch", "CGGM", "CGGMError", "Config", "ConfigError", "DATASETS", "Data", "DataError", "MODELS",
           "MultimodalModel", "NumericsError", "Output", "ResultsError", "STRATEGIES", "Strategy", "Trace",
           "TrainResult", "build_model", "check_parameters", "evaluate", "evaluate_classifiers", "figures", "load_data", "load_run", "make_strategy", "metrics",
           "run_experiment", "runs", "save_run", "seed_everything", "tasks", "train"]
