"""The dataset registry: one entry per dataset with every fact the rest of cggmlib needs about it.

`REGISTRY[name]` (a `DatasetFacts`) holds the dataset's modalities (in its loader's order), its task
kind and its description for Table 1, which of the paper's results tables reports it and with which
metrics, the number its released training script prints (the "official" protocol, docs/methods.md),
and its hyperparameter presets: `paper` (Table 7 as the official code sets it) and `smoke` (CPU).
The selection metric follows from the task kind (`cggmlib/tasks.py`). The pipeline, the protocol,
the tables and the cost table read these facts from here; `tests/test_presets.py` checks that the
loaders agree.

The paper's Table 7 values could not be read from the PDF; the `paper` preset holds the official
code's defaults (zrguo/CGGM run/*.py and src/*.py). Where the paper's text names something else
(AdamW for IEMOCAP, soft Dice + 1·CE for BraTS), a comment says so. Each entry's presets:
- `train`: loop settings (Config fields): batch size, epochs, optimizer, learning rate, clipping, scheduler;
- `cggm`: the strategy's defaults for that dataset (ρ, λ, classifier learning rate and optimizer);
- `model`: keyword arguments of the dataset's model builder.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields

from .errors import ConfigError
from .tasks import Classification, Regression, Segmentation

PRESETS = ("smoke", "paper")

_MSA_TRAIN = dict(batch_size=64, epochs=30, optimizer="adam", lr=1e-3, weight_decay=0.0, grad_clip=0.8,
                  scheduler="plateau")
_SMOKE_TRAIN = dict(batch_size=64, epochs=3, optimizer="adam", lr=1e-3, weight_decay=0.0, grad_clip=0.8,
                    scheduler="none")

_TRAIN: dict[str, dict[str, dict]] = {
    "synthetic": {"smoke": _SMOKE_TRAIN | dict(epochs=20), "paper": _SMOKE_TRAIN | dict(epochs=40)},
    "mfeat": {"smoke": _SMOKE_TRAIN | dict(epochs=20), "paper": _SMOKE_TRAIN | dict(epochs=60)},
    "mosi": {"smoke": _SMOKE_TRAIN, "paper": _MSA_TRAIN},
    # the paper (Sec. 4.2) says AdamW for IEMOCAP; the released run/iemo_run.py uses Adam
    "iemocap": {"smoke": _SMOKE_TRAIN, "paper": _MSA_TRAIN},
    "food101": {"smoke": _SMOKE_TRAIN | dict(optimizer="adamw", weight_decay=6e-3),
                "paper": _MSA_TRAIN | dict(batch_size=128, epochs=60, optimizer="adamw", weight_decay=6e-3)},
    # cosine schedule 0.01 -> 0.001 per iteration after 10 linear warm-up epochs from 4e-4; no clipping
    "brats2021": {"smoke": dict(batch_size=8, epochs=2, optimizer="sgd", lr=0.01, weight_decay=3e-4,
                                grad_clip=0.0, scheduler="cosine", warmup_epochs=1),
                  "paper": dict(batch_size=64, epochs=75, optimizer="sgd", lr=0.01, weight_decay=3e-4,
                                grad_clip=0.0, scheduler="cosine", warmup_epochs=10)},
}

_CGGM_MSA = dict(rho=1.3, lam=0.2, head_lr=5e-4, head_optimizer="adam", head_weight_decay=0.0)

_CGGM: dict[str, dict[str, dict]] = {
    "synthetic": {"smoke": _CGGM_MSA, "paper": _CGGM_MSA},
    "mfeat": {"smoke": _CGGM_MSA, "paper": _CGGM_MSA},
    "mosi": {"smoke": _CGGM_MSA, "paper": _CGGM_MSA},
    "iemocap": {"smoke": _CGGM_MSA, "paper": _CGGM_MSA},
    "food101": {p: dict(rho=1.3, lam=0.05, head_lr=5e-4, head_optimizer="adamw", head_weight_decay=3e-3)
                for p in PRESETS},
    # official BraTS: rho 1.0 (never applied there, see the audit notebook), lambda 0.1, SGD classifiers
    "brats2021": {p: dict(rho=1.0, lam=0.1, head_lr=6e-3, head_optimizer="sgd", head_weight_decay=3e-4)
                  for p in PRESETS},
}

# Table 7 as run/{mosi,iemo,food}_run.py set it: d 40, 5 heads, encoder layers `nlevels`, fusion
# nlevels - 2, classifiers 2 layers; dropouts attention / ReLU / embedding / residual / output.
_MSA_SMOKE = dict(dim=16, heads=2, layers=1, fusion_layers=1, classifier_layers=1)
_DEEPLAB_PAPER = dict(depth=101, width=64, output_stride=16, aspp_channels=256, aspp_dilations=(1, 2, 4, 6),
                      decoder_channels=256)
_DEEPLAB_TINY = dict(depth=101, width=8, blocks=(1, 1, 1), output_stride=16, aspp_channels=16,
                     aspp_dilations=(1, 2, 4, 6), decoder_channels=16)

_MODEL: dict[str, dict[str, dict]] = {
    "synthetic": {"smoke": dict(hidden=64, feature_dim=32), "paper": dict(hidden=64, feature_dim=32)},
    "mfeat": {"smoke": dict(hidden=64, feature_dim=32), "paper": dict(hidden=128, feature_dim=64)},
    "mosi": {"smoke": _MSA_SMOKE,
             "paper": dict(dim=40, heads=5, layers=5, fusion_layers=3, classifier_layers=2, attn_dropout=0.15,
                           relu_dropout=0.15, embed_dropout=0.2, res_dropout=0.1, out_dropout=0.1)},
    "iemocap": {"smoke": _MSA_SMOKE,
                "paper": dict(dim=40, heads=5, layers=4, fusion_layers=2, classifier_layers=2, attn_dropout=0.15,
                              relu_dropout=0.15, embed_dropout=0.2, res_dropout=0.15, out_dropout=0.2)},
    "food101": {"smoke": _MSA_SMOKE,
                "paper": dict(dim=40, heads=5, layers=4, fusion_layers=2, classifier_layers=2, attn_dropout=0.2,
                              relu_dropout=0.15, embed_dropout=0.2, res_dropout=0.15, out_dropout=0.1)},
    # paper: four ResNet-101 DeepLabV3+ encoders (models/segmodel.py); smoke: the light U-Net.
    # model_kwargs={"arch": "unet"} (or "deeplab") switches architecture and keeps the preset's sizes.
    "brats2021": {"smoke": dict(arch="unet", unet=dict(channels=(4, 8, 16), head_channels=8), deeplab=_DEEPLAB_TINY),
                  "paper": dict(arch="deeplab", deeplab=_DEEPLAB_PAPER,
                                unet=dict(channels=(16, 32, 64, 128), head_channels=32))},
}


_TASK_KINDS = {"classification": Classification, "regression": Regression, "segmentation": Segmentation}


@dataclass(frozen=True)
class DatasetFacts:
    """What cggmlib knows about one dataset (one `REGISTRY` entry)."""

    name: str
    modalities: tuple
    """in the loader's order (the order of `Data.input_dims` and of the model's encoders)"""
    kind: str
    """classification | regression | segmentation"""
    task: str
    """the task as Table 1 describes it"""
    paper: bool = False
    """one of the paper's four tasks (their data steps, Tables 1–8)"""
    table: str = ""
    """the paper's results table that reports it (table2, table3, table4)"""
    reported: tuple = ()
    """the metrics that table reports, in its column order"""
    official: tuple | None = None
    """(split, metric) whose best value over epochs the released script prints; None: ("val", select)"""
    classes: int = 0
    """output classes of a classification or segmentation task (0: regression)"""
    shapes: dict = field(default_factory=dict)
    """the paper datasets: modality -> one sample's input shape at the real size, (time, features) for
    sequences and (channels, height, width) for images (the benchmark and the cost table build inputs of it)"""
    train: dict = field(default_factory=dict)
    cggm: dict = field(default_factory=dict)
    model: dict = field(default_factory=dict)

    @property
    def select(self) -> str:
        """The validation metric that selects the reported epoch (its task's `select`)."""
        return next(f.default for f in fields(_TASK_KINDS[self.kind]) if f.name == "select")

    def new_task(self):
        """A fresh task object of this dataset (its loss and metrics)."""
        return _TASK_KINDS[self.kind](*([self.classes] if self.classes else []))

    @property
    def official_number(self) -> tuple:
        return self.official or ("val", self.select)


def _entry(name, modalities, kind, task, **facts) -> DatasetFacts:
    return DatasetFacts(name, modalities, kind, task, train=_TRAIN[name], cggm=_CGGM[name], model=_MODEL[name], **facts)


#: dataset -> its facts; the paper's four first, in the order of the paper's tables
REGISTRY: dict[str, DatasetFacts] = {f.name: f for f in (
    # the official Food-101 script prints the best *test* accuracy (its "valid" loader is the test split)
    # shapes: ViT-B/16 tokens (196 patches + CLS) and BERT tokens (at most 50), both 768 wide
    _entry("food101", ("image", "text"), "classification", "classification (101 classes)", paper=True,
           table="table2", reported=("acc", "f1"), official=("test", "acc"), classes=101,
           shapes={"image": (197, 768), "text": (50, 768)}),
    # the official BraTS script intends the best validation Dice (it prints 0: docs/methods.md)
    _entry("brats2021", ("flair", "t1ce", "t1", "t2"), "segmentation", "segmentation (4 classes, 2-D slices)",
           paper=True, table="table3", reported=("dice_wt", "dice_tc", "dice_et", "dice_mean"),
           official=("val", "dice_mean"), classes=4,  # one 160 x 160 axial slice per sequence (cropped as released)
           shapes={m: (1, 160, 160) for m in ("flair", "t1ce", "t1", "t2")}),
    # shapes: the aligned MulT pickle (50 steps of GloVe 300, COVAREP 5, Facet 20)
    _entry("mosi", ("text", "audio", "vision"), "regression", "regression (sentiment in [−3, 3])", paper=True,
           table="table4", reported=("acc2", "acc7", "f1", "mae", "corr"), official=("val", "acc2"),
           shapes={"text": (50, 300), "audio": (50, 5), "vision": (50, 20)}),
    # shapes: BERT-large tokens (22), audio padded to 350 frames of 130, 50 frames of 342 visual features
    _entry("iemocap", ("text", "audio", "vision"), "classification", "classification (4 emotions)", paper=True,
           table="table4", reported=("acc", "f1"), official=("val", "acc"), classes=4,
           shapes={"text": (22, 1024), "audio": (350, 130), "vision": (50, 342)}),
    _entry("synthetic", ("m0", "m1", "m2"), "classification", "classification (synthetic, 3 modalities)",
           classes=10),
    _entry("mfeat", ("fou", "fac", "kar", "pix", "zer", "mor"), "classification",
           "classification (10 digits, 6 feature views)", classes=10),
)}
PAPER_DATASETS = tuple(n for n, f in REGISTRY.items() if f.paper)


def facts(dataset: str) -> DatasetFacts:
    """The registry entry of `dataset`; a clear error naming the known ones."""
    if dataset not in REGISTRY:
        raise ConfigError(f"unknown dataset {dataset!r}; choose from {sorted(REGISTRY)}")
    return REGISTRY[dataset]


_WHAT = {"train": "training", "cggm": "CGGM", "model": "model"}


def _lookup(dataset: str, preset: str, what: str) -> dict:
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose from {list(PRESETS)}")
    if dataset not in REGISTRY:
        raise ConfigError(f"no {_WHAT[what]} preset for dataset {dataset!r}; known: {sorted(REGISTRY)}")
    return dict(getattr(REGISTRY[dataset], what)[preset])


def train_kwargs(dataset: str, preset: str = "smoke") -> dict:
    return _lookup(dataset, preset, "train")


def cggm_kwargs(dataset: str, preset: str = "smoke") -> dict:
    return _lookup(dataset, preset, "cggm") if dataset in REGISTRY else {}


def model_kwargs(dataset: str, preset: str = "smoke") -> dict:
    return _lookup(dataset, preset, "model") if dataset in REGISTRY else {}


__all__ = ["DatasetFacts", "PAPER_DATASETS", "PRESETS", "REGISTRY", "cggm_kwargs", "facts", "model_kwargs", "train_kwargs"]
