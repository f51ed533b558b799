"""Run the released CGGM training loop and cggmlib's official variant side by side.

    python -m cggmlib.fidelity --released PATH/TO/CGGM [--tasks mosi,iemocap,food] [--steps 20] [--batch 24]

PATH is your clone of github.com/zrguo/CGGM at commit 21e428c (it needs `einops`, `scikit-learn` and,
for Food-101, `transformers` importable). For each task both sides start from the same weights (the
released models' random initialisation, copied onto ours by `weights.py`), train on the same fixed
random batches with every dropout at 0, and the largest parameter difference after `--steps` steps
is printed, first for `variant="official"` and then with each of our corrections switched on alone
(which shows what each correction changes). The released loop is the released `train_model()` of
src/msatrain.py and src/foodtrain.py, called as is with one epoch; its scheduler, validation and
printing run too. It assumes CUDA (`.cuda()`, `torch.cuda.device(0)`); on a CPU those two are made
no-ops while it runs, so its CUDA branch (the only one that defines its inputs) executes on the CPU.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import torch

from ..errors import ConfigError
from ..files import write_block
from . import weights

#: fixed shapes: MOSI (aligned features, 300/5/20), IEMOCAP (300/74/35), Food-101 (768-d tokens)
TASKS = {
    "mosi": dict(dims={"text": 300, "audio": 5, "vision": 20}, steps=(12, 12, 12), out=1, dim=20, layers=3),
    "iemocap": dict(dims={"text": 300, "audio": 74, "vision": 35}, steps=(12, 12, 12), out=4, dim=20, layers=3),
    "food": dict(dims={"image": 768, "text": 768}, steps=(10, 8), out=101, dim=40, layers=3),
}
#: our corrections, each switched on alone after the official run
CORRECTIONS = {"scaled=encoder": dict(scaled="encoder"), "classifier_head=two_layer": dict(classifier_head="two_layer"),
               "precision=float32": dict(precision="float32")}
RHO, LAM, CLIP, LR, CLS_LR = 1.3, 0.2, 0.8, 1e-3, 5e-4


@dataclass
class Result:
    task: str
    setting: str
    max_param_diff: float
    where: str
    max_eps_diff: float
    steps: int
    without_key_bias: float = float("nan")
    notes: dict = field(default_factory=dict)


def import_released(root: Path):
    """The released modules, imported from `root` (appended to sys.path, so nothing of ours is shadowed)."""
    missing = [p for p in ("models/msamodel.py", "models/foodmodel.py", "src/msatrain.py", "src/foodtrain.py")
               if not (root / p).is_file()]
    if missing:
        raise ConfigError(f"--released {root}: not a clone of zrguo/CGGM (missing {missing}); clone it with "
                          "`git clone https://github.com/zrguo/CGGM && git -C CGGM checkout 21e428c`")
    if str(root) not in sys.path:
        sys.path.append(str(root))
    try:
        import models.foodmodel as food
        import models.msamodel as msa
        import src.foodtrain as foodtrain
        import src.msatrain as msatrain
    except ImportError as err:
        raise ConfigError(f"the released code in {root} could not be imported ({err}); it needs einops, "
                          "scikit-learn and transformers: pip install einops scikit-learn transformers") from err
    return SimpleNamespace(msa=msa, food=food, msatrain=msatrain, foodtrain=foodtrain)


@contextlib.contextmanager
def cuda_as_cpu():
    """Let CUDA-only code run on the CPU: `Tensor.cuda()` returns the tensor, `torch.cuda.device` does nothing."""
    if torch.cuda.is_available():
        yield
        return
    cuda, device = torch.Tensor.cuda, torch.cuda.device
    torch.Tensor.cuda = lambda self, *a, **k: self
    torch.cuda.device = lambda *a, **k: contextlib.nullcontext()
    try:
        yield
    finally:
        torch.Tensor.cuda, torch.cuda.device = cuda, device


def make_batches(task: str, n: int, batch: int, seed: int = 0) -> list[tuple[dict, torch.Tensor]]:
    """n fixed batches: ({modality: (B, T_m, D_m)}, target) with MOSI scores in [−3, 3] or class indices."""
    spec, g = TASKS[task], torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        inputs = {m: torch.randn(batch, t, d, generator=g) for (m, d), t in zip(spec["dims"].items(), spec["steps"])}
        y = (torch.rand(batch, generator=g) * 6 - 3) if spec["out"] == 1 else torch.randint(spec["out"], (batch,), generator=g)
        out.append((inputs, y))
    return out


def released_models(rel, task: str, seed: int):
    spec = TASKS[task]
    torch.manual_seed(seed)
    zero = dict(relu_dropout=0.0, embed_dropout=0.0, res_dropout=0.0, attn_dropout=0.0)
    if task == "food":
        model = rel.food.FoodModel(spec["out"], 5, spec["layers"], out_dropout=0.0, **zero)
    else:
        model = rel.msa.MSAModel(spec["out"], list(spec["dims"].values()), spec["dim"], 5, spec["layers"],
                                 out_dropout=0.0, **zero)
    classifier = rel.msa.ClassifierGuided(spec["out"], len(spec["dims"]), spec["dim"], 5, 2, **zero)
    return model, classifier


def run_released(rel, task: str, batches, seed: int) -> tuple[dict, dict, list]:
    """Train the released models with the released `train_model` for one epoch over `batches`."""
    model, classifier = released_models(rel, task, seed)
    food = task == "food"
    opt = torch.optim.AdamW if food else torch.optim.Adam
    optimizer = opt(model.parameters(), lr=LR, weight_decay=6e-3 if food else 0.0)
    cls_optimizer = opt(classifier.parameters(), lr=CLS_LR, weight_decay=3e-3 if food else 0.0)
    criterion = torch.nn.L1Loss() if task == "mosi" else torch.nn.CrossEntropyLoss()
    settings = dict(model=model, optimizer=optimizer, criterion=criterion, classifier=classifier,
                    cls_optimizer=cls_optimizer,
                    scheduler=torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, patience=10, factor=0.1))
    eps = []
    observe = classifier.cal_coeff
    classifier.cal_coeff = lambda *a: eps.append(observe(*a)) or eps[-1]
    n = len(batches)
    hyp = SimpleNamespace(num_mod=len(TASKS[task]["dims"]), n_train=n, n_valid=1, n_test=1, batch_size=len(batches[0][1]),
                          dataset={"mosi": "mosi", "iemocap": "iemo", "food": "food"}[task], use_cuda=True,
                          modulation="cggm", lamda=LAM, rou=RHO, clip=CLIP, num_epochs=1, when=10)
    if food:
        settings |= dict(vit=lambda image: {"last_hidden_state": image},
                         bert=lambda ids, mask, types: {"last_hidden_state": ids})
        loader = [({"input_ids": x["text"], "attention_mask": x["text"], "token_type_ids": x["text"]}, x["image"],
                   y[:, None]) for x, y in batches]
        train_model = rel.foodtrain.train_model
    else:
        loader = [dict(x, labels=y[:, None, None] if task == "mosi" else y[:, None]) for x, y in batches]
        train_model = rel.msatrain.train_model
    with cuda_as_cpu(), contextlib.redirect_stdout(io.StringIO()):
        train_model(settings, hyp, loader, loader[:1], loader[:1])
    return model.state_dict(), classifier.state_dict(), [[float(e) for e in row] for row in eps]


def run_ours(task: str, batches, init_model: dict, init_cls: dict, overrides: dict) -> tuple[dict, dict, list]:
    """Train cggmlib's model with CGGM (official variant + `overrides`) through `train_step`."""
    from ..config import Config
    from ..data.base import Batch
    from ..models.food import FoodModel
    from ..models.msa import MSAModel
    from ..modulation import make_strategy
    from ..training.optim import step_tools
    from ..tasks import Classification, Regression
    from ..train import train_step

    spec, food = TASKS[task], task == "food"
    overrides = dict(overrides)
    model_kwargs = {"text_projection": overrides.pop("text_projection")} if "text_projection" in overrides else {}
    zero = dict(attn_dropout=0.0, relu_dropout=0.0, embed_dropout=0.0, res_dropout=0.0, out_dropout=0.0)
    cls = FoodModel if food else MSAModel
    model = cls(spec["dims"], spec["out"], dim=spec["dim"], heads=5, layers=spec["layers"],
                fusion_layers=spec["layers"] - 2, classifier_layers=2, **zero, **model_kwargs)
    model.load_state_dict(weights.model_state(init_model, list(spec["dims"])), strict=not model_kwargs)
    task_obj = Regression() if task == "mosi" else Classification(spec["out"])
    strategy = make_strategy("cggm", rho=RHO, lam=LAM, variant="official", overlap=False,
                             head_optimizer="adamw" if food else "adam", head_lr=CLS_LR,
                             head_weight_decay=3e-3 if food else 0.0, **overrides)
    strategy.setup(model, task_obj)
    for m, state in weights.classifier_states(init_cls, list(spec["dims"])).items():
        strategy.classifiers.heads[m].load_state_dict(state, strict=strategy.resolved["classifier_head"] == "released")
    cfg = Config(dataset="custom", strategy="cggm", optimizer="adamw" if food else "adam", lr=LR,
                 weight_decay=6e-3 if food else 0.0, grad_clip=CLIP, batch_size=len(batches[0][1]), epochs=1)
    tools = step_tools(cfg, model, strategy, torch.device("cpu"), grad_norms=False)
    model.train()
    eps = []
    for k, (x, y) in enumerate(batches):
        row = train_step(model, strategy, Batch(x, y), 0, tools, step=k)
        eps.append([float(row[f"eps/{m}"]) for m in spec["dims"]])
    return model.state_dict(), {m: h.state_dict() for m, h in strategy.classifiers.heads.items()}, eps


def compare(rel, task: str, steps: int, batch: int, seed: int = 0, only: tuple | None = None) -> list[Result]:
    """Official variant, then each correction alone (or just the settings named in `only`), against one
    run of the released loop."""
    batches = make_batches(task, steps, batch, seed)
    init_model, init_cls = (m.state_dict() for m in released_models(rel, task, seed))
    init_model = {k: v.clone() for k, v in init_model.items()}
    init_cls = {k: v.clone() for k, v in init_cls.items()}
    rel_model, rel_cls, rel_eps = run_released(rel, task, batches, seed)
    theirs = weights.model_state(rel_model, list(TASKS[task]["dims"]))
    theirs_cls = weights.classifier_states(rel_cls, list(TASKS[task]["dims"]))
    settings = {"official": {}} | CORRECTIONS | ({"text_projection=own": {"text_projection": "own"}} if task == "food" else {})
    settings = {k: v for k, v in settings.items() if only is None or k in only}
    results = []
    for name, overrides in settings.items():
        model, heads, eps = run_ours(task, batches, init_model, init_cls, overrides)
        diff, where = weights.max_difference(model, theirs)
        rest = weights.max_difference(model, theirs, skip_key_bias=True)[0]
        for m, state in heads.items():
            d, w = weights.max_difference(state, theirs_cls[m])
            if d > diff:
                diff, where = d, f"classifier {m}: {w}"
            rest = max(rest, weights.max_difference(state, theirs_cls[m], skip_key_bias=True)[0])
        eps_diff = max(abs(a - b) for ra, rb in zip(eps, rel_eps) for a, b in zip(ra, rb))
        results.append(Result(task, name, diff, where, eps_diff, steps, rest))
    return results


def markdown(results: list[Result]) -> str:
    lines = ["| task | setting | max parameter difference | where | without the attention key bias | max ε difference |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r.task} | {r.setting} | {r.max_param_diff:.2e} | `{r.where}` | {r.without_key_bias:.2e} | "
              f"{r.max_eps_diff:.2e} |" for r in results]
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m cggmlib.fidelity", description=__doc__.split("\n\n")[0])
    p.add_argument("--released", type=Path, required=True, help="your clone of zrguo/CGGM at 21e428c")
    p.add_argument("--tasks", default="mosi,iemocap,food", help="comma-separated: mosi, iemocap, food")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=24, help="24: not a power of two, where float32 B goes wrong")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--write-docs", type=Path, metavar="MD",
                   help="replace the block between <!-- fidelity:begin --> and <!-- fidelity:end --> in MD")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        p.error(f"--tasks: unknown {unknown}; choose from {sorted(TASKS)}")
    rel = import_released(args.released.resolve())
    results = [r for t in tasks for r in compare(rel, t, args.steps, args.batch, args.seed)]
    header = (f"{args.steps} steps, batch {args.batch}, seed {args.seed}, dropout 0, CPU, {args.threads} thread(s), "
              f"torch {torch.__version__}")
    print(header + "\n")
    print(markdown(results))
    if args.json:
        args.json.write_text(json.dumps([r.__dict__ for r in results], indent=1))
    if args.write_docs:
        write_block(args.write_docs, f"{header}:\n\n{markdown(results)}", "fidelity")
