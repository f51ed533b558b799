"""The paper profile's dry run: `cggm reproduce --profile dryrun` (before the first GPU hour).

The `dryrun` profile (cggmlib/repro/pipeline.py) is the `paper` profile's grid with the paper preset (model
sizes, optimizers, schedules, batch sizes) on stand-ins written at the real datasets' per-sample shapes
(`FULL_SIZE_STANDINS`: MOSI with its real split sizes, IEMOCAP with its 5,531 utterances, Food-101 with
all 101 classes, 224-pixel images and 768-wide BERT/ViT folders but fewer samples, BraTS with 8 cases of
the real 240 × 240 × 155 volumes). Each run trains `Config.max_steps` optimisation steps in one epoch,
evaluates `Config.max_eval_batches` batches per split and writes its run folder; then every report renders.
Both limits are part of the run's configuration key and recorded in config.json and the run card, so a
dry-run folder can never be taken for a real one; no real profile sets them.

What a dry run lowers, said here and in every run card: BraTS trains at batch 2 on the CPU (the paper
batch of 64 four-encoder ResNet-101 DeepLabV3+ slices does not fit a CPU machine's memory; the cost
table, `python -m cggmlib.repro.cost`, extrapolates its memory and time to 64).

Runs of one shape are trained once (`Profile.reuse_shapes`): a run whose (dataset, strategy, strategy
options other than the numeric ρ and λ, other settings, extra result files) equals one already trained
differs only in its seed or a coefficient, which changes no tensor shape, so its folder is a copy of
the first one's, labelled in `DRY_RUN_COPY.json` and in the run card (`dry_run_copy_of`), with its own
config.json. Checkpoints are not copied, and a dry run deletes its own once the run is complete; the
selected weights (best.pt, best_strategy.pt) are kept and copied only for runs a report reads them from
(`READS_WEIGHTS`: the imbalance study probes frozen encoders), so a BraTS run leaves no gigabyte behind.
`shape_phases` runs one run of each shape first and the copies after, so that parallel jobs never train
two runs of one shape at once (each would find no completed run to copy).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..files import atomic_write_json
from .pipeline import grid
from .reports import spec_status

#: strategy options that change values, never shapes (a run differing only in them is one shape)
VALUE_ONLY = ("rho", "lam", "teacher_seed")
MARKER = "DRY_RUN_COPY.json"
NOT_COPIED = ("checkpoint.pt", "10_train.ipynb")
#: the selected weights of a run
WEIGHTS = ("best.pt", "best_strategy.pt")
#: report groups that read a run's selected weights (41_imbalance_study: linear probes on frozen encoders)
READS_WEIGHTS = frozenset({"study"})


def keeps_weights(spec) -> bool:
    """Whether a report reads this run's selected weights, so a dry run keeps (and copies) them."""
    return bool(set(spec.groups) & READS_WEIGHTS)


def dry_run_parameters(profile, spec) -> dict:
    """The worker notebook's dry-run parameters (none for a real profile, whose notebooks stay as they were)."""
    if not (profile.max_steps or profile.max_eval_batches or profile.batch_size):
        return {}
    return {"max_steps": profile.max_steps, "max_eval_batches": profile.max_eval_batches,
            "batch_size": int(profile.batch_size.get(spec.dataset, 0))}


def shape_key(spec) -> tuple:
    """What fixes a run's tensor shapes and code path: everything but the seed and VALUE_ONLY options."""
    options = tuple((k, v) for k, v in spec.kwargs if k not in VALUE_ONLY)
    return spec.dataset, spec.strategy, options, spec.settings, tuple(sorted(spec.artifacts))


def shape_phases(steps) -> list[list]:
    """Worker `steps` in two phases: the first of each shape (trained), then the others (copied from it)."""
    first, rest, seen = [], [], set()
    for step in steps:
        key = shape_key(step.spec)
        (rest if key in seen else first).append(step)
        seen.add(key)
    return [phase for phase in (first, rest) if phase]


def drop_checkpoints(folder, keep_weights: bool = False) -> list[str]:
    """A completed dry run's checkpoint (about 3 GB for a BraTS run) and, unless `keep_weights`, its selected
    weights: nothing reads them; removed."""
    gone = []
    for name in ("checkpoint.pt", *(() if keep_weights else WEIGHTS)):
        if (Path(folder) / name).exists() and (Path(folder) / "metrics.json").exists():
            (Path(folder) / name).unlink()
            gone.append(name)
    return gone


def reuse_shape(results, profile, spec) -> Path | None:
    """Copy the completed run of `spec`'s shape into `spec`'s folder (labelled); the source, or None."""
    if not profile.reuse_shapes:
        return None
    key = shape_key(spec)
    source = next((s for s in grid(profile) if s != spec and shape_key(s) == key
                   and spec_status(s, results, profile) == "done"
                   and not (s.path(results, profile) / MARKER).exists()
                   and (not keeps_weights(spec) or (s.path(results, profile) / "best.pt").exists())), None)
    if source is None:
        return None
    src, dst = source.path(results, profile), spec.path(results, profile)
    if dst.exists():
        shutil.rmtree(dst)  # a dry run's own incomplete folder: nothing real is ever there
    skip = (*NOT_COPIED, *(() if keeps_weights(spec) else WEIGHTS), "*.lock")
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(*skip))
    shutil.copy2(src / "10_train.ipynb", dst / "10_train.ipynb")  # the executed worker of the shape's run
    root = Path(results) / profile.name
    cfg = spec.config(profile, json.loads((src / "config.json").read_text())["data_root"])
    why = (f"dry run: same (dataset, strategy, model, batch) shape as {src.relative_to(root)}, which was trained; "
           "this folder is its copy with this run's configuration")
    atomic_write_json(dst / "config.json", cfg.to_dict())
    card = json.loads((dst / "run_card.json").read_text())
    atomic_write_json(dst / "run_card.json", card | {"config_key": cfg.key(), "seed": cfg.seed,
                                                     "dry_run_copy_of": str(src.relative_to(root))})
    atomic_write_json(dst / MARKER, {"copy_of": str(src.relative_to(root)), "why": why})
    return src


__all__ = ["MARKER", "READS_WEIGHTS", "drop_checkpoints", "dry_run_parameters", "keeps_weights", "reuse_shape",
           "shape_key", "shape_phases"]
