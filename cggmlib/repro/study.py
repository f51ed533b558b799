"""What CGGM does, measured: each modality's held-out utilisation and what the balance term B_m measures.

Held-out utilisation of modality m (after any training): a linear probe (multinomial logistic
regression on standardised features) fitted on the frozen encoder's output φ_m(x_m) over the train
split and scored on the test split. The same probe on the encoder trained alone (`unimodal`) is the
reference, so `gap_m = probe(method) − probe(unimodal)` says how much of what modality m can learn
alone the multimodal training left unlearned. A linear probe, not CGGM's own classifier f_m, so the
measurement is the same for every method (most methods train no f_m).

`noise_decomposition` asks what B_m measures: at fixed weights it evaluates ε_m (the classifier error
of modality m on one batch), Δε_m and B_m over many batches, which is pure sampling noise, and sets
that spread beside the change of B_m from step to step along training.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..analysis import stats
from ..analysis.compare import methods
from ..config import Config
from ..data import load_data
from ..errors import ConfigError, ResultsError
from ..experiment import run_experiment
from ..models import build_model
from ..modulation import make_strategy
from ..modulation.coefficients import balance_coefficients, guarded_balance_coefficients
from ..runs.folder import load_run
from ..training.protocol import evaluate_classifiers
from .pipeline import STUDY_DATASETS as DATASETS, get_profile, grid


@torch.no_grad()
def encoder_features(model, loader, modality: str) -> tuple[np.ndarray, np.ndarray]:
    """(features (N, D), targets (N,)) of frozen encoder φ_m over every batch of `loader` (eval mode)."""
    if modality not in model.encoders:
        raise ConfigError(f"modality {modality!r} is not one of the model's encoders {list(model.encoders)}")
    was_training = model.training
    model.eval()
    feats, targets = [], []
    for batch in loader:
        f = model.encoders[modality](batch.inputs[modality])
        feats.append(f.reshape(len(f), -1).float().cpu())
        targets.append(batch.target.cpu())
    model.train(was_training)
    return torch.cat(feats).numpy(), torch.cat(targets).numpy()


def linear_probe(train_x, train_y, test_x, test_y, c: float = 1.0, max_iter: int = 2000) -> float:
    """Test accuracy of a multinomial logistic regression (L2, inverse strength `c`) fitted on the
    standardised train features; the standardisation uses train statistics only."""
    from sklearn.linear_model import LogisticRegression

    train_x, test_x = np.asarray(train_x, dtype=np.float64), np.asarray(test_x, dtype=np.float64)
    if len(np.unique(train_y)) < 2:
        raise ConfigError("linear_probe: the train split has a single class; a probe needs at least two")
    mean, std = train_x.mean(0), train_x.std(0) + 1e-8
    clf = LogisticRegression(C=c, max_iter=max_iter)
    clf.fit((train_x - mean) / std, train_y)
    return float((clf.predict((test_x - mean) / std) == np.asarray(test_y)).mean())


def probe_modalities(model, data, modalities=None) -> dict[str, float]:
    """{m: held-out utilisation}: the linear probe on frozen φ_m, fitted on data.train, scored on data.test."""
    out = {}
    for m in modalities or list(model.encoders):
        tx, ty = encoder_features(model, data.train, m)
        ex, ey = encoder_features(model, data.test, m)
        out[m] = linear_probe(tx, ty, ex, ey)
    return out


def load_trained(run_dir, data_root: str | None = None):
    """(model with the validation-selected weights, data) of a completed run folder (best.pt)."""
    from pathlib import Path

    d = Path(run_dir)
    cfg = Config.from_dict(load_run(d)["config"] | {"device": "cpu"})
    if not (d / "best.pt").exists():
        raise ResultsError(f"{d} has no best.pt (the selected weights); rerun it with an output folder")
    data = load_data(cfg.dataset, data_root if data_root is not None else cfg.data_root, batch_size=cfg.batch_size,
                     seed=cfg.seed, **cfg.data_kwargs)
    model = build_model(cfg.dataset, data, cfg.preset, **cfg.model_kwargs)
    model.load_state_dict(torch.load(d / "best.pt", map_location="cpu", weights_only=True))
    return model, data


def probe_run(run_dir, modalities=None, data_root: str | None = None) -> dict:
    """{"acc": fused test metric, "probe": {m: held-out utilisation}} of a completed run folder."""
    metrics = load_run(run_dir)["metrics"]
    model, data = load_trained(run_dir, data_root)
    return {"acc": metrics.get("acc"), "standin": bool(metrics.get("standin", False)),
            "probe": probe_modalities(model, data, modalities)}


def frame(runs: list[dict]) -> "pd.DataFrame":
    """Long frame from [{dataset, method, seed, path}]: one row per (run, modality) with the probe
    beside the unimodal probe of the same modality and seed, and gap = probe − unimodal.

    Methods named `unimodal:<m>` are the references; every other method is probed on every modality.
    """
    import pandas as pd

    rows, alone = [], {}
    for run in runs:
        unimodal = run["method"].startswith("unimodal:")
        mods = [run["method"].split(":", 1)[1]] if unimodal else None
        got = probe_run(run["path"], mods, run.get("data_root"))
        for m, value in got["probe"].items():
            if unimodal:
                alone[(run["dataset"], m, run["seed"])] = value
            else:
                rows.append({"dataset": run["dataset"], "method": run["method"], "seed": run["seed"], "acc": got["acc"],
                             "modality": m, "probe": value, "standin": got["standin"]})
    out = pd.DataFrame(rows, columns=["dataset", "method", "seed", "acc", "modality", "probe", "standin"])
    out["unimodal"] = [alone.get((d, m, s), math.nan) for d, m, s in zip(out["dataset"], out["modality"], out["seed"])]
    out["gap"] = out["probe"] - out["unimodal"]
    return out


def summary(long: "pd.DataFrame", reference: str = "joint") -> "pd.DataFrame":
    """Per (dataset, method, modality): mean gap to unimodal with its 95% interval (over seeds), and the
    probe's paired difference to `reference` on the same seeds with its interval; the fused test
    accuracy likewise (modality "fused")."""
    import pandas as pd

    out = []
    fused = long.drop_duplicates(["dataset", "method", "seed"]).assign(modality="fused", probe=lambda f: f["acc"],
                                                                         gap=math.nan)
    for (dataset, method, modality), sub in pd.concat([long, fused]).groupby(["dataset", "method", "modality"], sort=False):
        gap = stats.aggregate(sub["gap"])
        row = {"dataset": dataset, "method": method, "modality": modality, "n": int(sub["seed"].nunique()),
               "value": float(sub["probe"].mean()), "gap": gap["mean"], "gap_low": gap["ci_low"], "gap_high": gap["ci_high"]}
        ref = long if modality != "fused" else fused
        ref = ref[(ref["dataset"] == dataset) & (ref["method"] == reference) & (ref["modality"] == modality)]
        if method != reference and len(ref):
            diff = stats.paired_difference(dict(zip(sub["seed"], sub["probe"])), dict(zip(ref["seed"], ref["probe"])))
            row |= {"vs_joint": diff["mean"], "vs_joint_low": diff["ci_low"], "vs_joint_high": diff["ci_high"]}
        out.append(row)
    return pd.DataFrame(out)


def gap_figure(table: "pd.DataFrame", notes: dict | None = None):
    """One row of panels per dataset, one panel per modality: gap to unimodal by method, 95% intervals.
    `notes`: dataset -> label printed on its row (e.g. "synthetic data", "stand-in")."""
    import matplotlib.pyplot as plt

    parts = {d: t[t["modality"] != "fused"] for d, t in table.groupby("dataset", sort=False)}
    cols = max(t["modality"].nunique() for t in parts.values())
    fig, axes = plt.subplots(len(parts), cols, figsize=(2.3 * cols, 2.6 * len(parts)), squeeze=False, sharey="row")
    for row, (dataset, part) in zip(axes, parts.items()):
        for ax, (modality, sub) in zip(row, part.groupby("modality", sort=False)):
            y = 100 * sub["gap"].to_numpy()
            err = 100 * np.abs(np.stack([sub["gap"] - sub["gap_low"], sub["gap_high"] - sub["gap"]]).astype(float))
            ax.errorbar(range(len(sub)), y, yerr=np.nan_to_num(err), fmt="o", capsize=3)
            ax.axhline(0, color="grey", lw=0.8)
            ax.set_xticks(range(len(sub)), sub["method"], rotation=60, ha="right", fontsize=7)
            ax.set_title(f"{dataset} · {modality}", fontsize=8)
        for ax in row[part["modality"].nunique():]:
            ax.set_visible(False)
        row[0].set_ylabel("probe − unimodal (points)")
        note = (notes or {}).get(dataset)
        if note:
            row[0].annotate(note, (0.02, 0.04), xycoords="axes fraction", fontsize=7, color="firebrick")
    fig.suptitle("Held-out utilisation: linear probe on the frozen encoder minus the encoder trained alone "
                 "(mean, 95% CI over seeds)", fontsize=9)
    fig.tight_layout()
    return fig


#: the strategies of the smoke-sized study (the paper profile runs every registered strategy)
SMOKE_METHODS = ("joint", "cggm")


def runs(datasets=tuple(DATASETS), seeds: int = 5, names=None, epochs: int | None = None, results="results/study",
         data_root="data", preset="smoke", data_options: dict | None = None, only=None, log=print,
         overwrite: bool = False) -> list[dict]:
    """Train (or reuse) every (dataset, method, seed) of the study; [{dataset, method, seed, path}].

    `overwrite`: a folder holding another configuration's run (e.g. other epochs) is moved aside to
    `.superseded/` and retrained; without it that is an error naming the fields that differ.

    `names`: strategies as in `cggm compare` (None: all; `cggm` brings its variants, `unimodal` one run
    per modality). Run folders: <results>/<dataset>/<method>/seed<k>, reused when complete.
    `data_options` are added to every dataset's options (e.g. a smaller `num_samples` for a quick look).
    `log`: called with one line per run (None: silent). `only`: keep just these method names (e.g. ("joint", "cggm", "cggm+guard", "unimodal:m1")).
    """
    from pathlib import Path

    if not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 1:
        raise ConfigError(f"study: seeds must be an integer >= 1 (the number of seeds, 0..seeds-1), got {seeds!r}")
    out = []
    for name in datasets:
        if name not in DATASETS:
            raise ConfigError(f"study: unknown dataset {name!r}; choose from {sorted(DATASETS)}")
        dataset, options = DATASETS[name]
        options = options | (data_options or {})
        modalities = load_data(dataset, data_root, **options).modalities
        labels = methods(modalities, None if names in (None, ["all"], ("all",)) else ["unimodal", *names])
        unknown = sorted(set(only or ()) - set(labels))
        if unknown:
            raise ConfigError(f"study: no method {unknown} on {name}; its methods are {sorted(labels)}")
        for label, (strategy, kw) in labels.items():
            if only and label not in only:
                continue
            for seed in range(seeds):
                cfg = Config(dataset=dataset, strategy=strategy, strategy_kwargs=kw, seed=seed, epochs=epochs,
                             preset=preset, data_root=data_root, data_kwargs=dict(options))
                path = Path(results) / name / label.replace(":", "-") / f"seed{seed}"
                result = run_experiment(cfg, path, skip_done=True, overwrite=overwrite, progress=False)
                if log is not None:
                    log(f"{name} {label} seed{seed}: acc {result.metrics.get('acc')}")
                out.append({"dataset": name, "method": label, "seed": seed, "path": str(path), "data_root": data_root})
    return out


def method_name(strategy: str, options: dict) -> str:
    """The study's name of a run: `unimodal:<m>`, `cggm+guard`, or the strategy's registry name."""
    if strategy == "unimodal":
        return f"unimodal:{options['modality']}"
    if strategy == "cggm":
        return "cggm" + "".join(f"+{k}" if v is True else f"+{k}={v}" for k, v in sorted(options.items()))
    return strategy


def pipeline_runs(results, profile) -> list[dict]:
    """The completed runs of the pipeline's `study` group: [{dataset, method, seed, path}] for `frame`."""
    profile = get_profile(profile) if isinstance(profile, str) else profile
    names = {(d, tuple(sorted(o.items()))): name for name, (d, o) in DATASETS.items()}
    out = []
    for spec in grid(profile):
        if "study" not in spec.groups or not (spec.path(results, profile) / "metrics.json").exists():
            continue
        options = dict(dict(spec.settings).get("data_kwargs", ()))
        out.append({"dataset": names[(spec.dataset, tuple(sorted(options.items())))], "seed": spec.seed,
                    "method": method_name(spec.strategy, {k: v for k, v in spec.strategy_kwargs.items() if k != "observe"}),
                    "path": str(spec.path(results, profile))})
    return out


def robust_var(x) -> float:
    """(1.4826 · median absolute deviation)²: a variance that heavy tails (the unguarded B_m) do not swamp."""
    x = np.asarray(x, dtype=float)
    x = x[np.isfinite(x)]
    if len(x) < 2:
        return math.nan
    return float((1.4826 * np.median(np.abs(x - np.median(x)))) ** 2)


@torch.no_grad()
def batch_noise(heads: dict, features: dict, target, batch_size: int = 64, draws: int = 200,
                seed: int = 0) -> "pd.DataFrame":
    """At fixed weights: ε_m (accuracy of classifier f_m = heads[m] on frozen features) on `draws` random
    batches of `batch_size`, Δε_m between consecutive draws, and B_m from those Δε by the released formula
    (`balance/`) and the guarded one (`guarded/`). Nothing is trained, so every spread is sampling noise."""
    import pandas as pd


    target = torch.as_tensor(np.asarray(target))
    feats = {m: torch.as_tensor(np.asarray(f), dtype=torch.float32) for m, f in features.items()}
    if batch_size > len(target):
        raise ConfigError(f"batch_noise: batch_size {batch_size} exceeds the {len(target)} samples given")
    g = torch.Generator().manual_seed(seed)
    mods, rows, last = list(heads), [], None
    for _ in range(draws):
        idx = torch.randperm(len(target), generator=g)[:batch_size]
        eps = torch.tensor([(heads[m](feats[m][idx]).argmax(-1) == target[idx]).double().mean().item() for m in mods],
                           dtype=torch.float64)
        if last is not None:
            delta = eps - last
            row = {f"eps/{m}": e for m, e in zip(mods, eps.tolist())} | {f"delta/{m}": d for m, d in zip(mods, delta.tolist())}
            row |= {f"balance/{m}": b for m, b in zip(mods, balance_coefficients(delta).tolist())}
            row |= {f"guarded/{m}": b for m, b in zip(mods, guarded_balance_coefficients(delta).tolist())}
            rows.append(row)
        last = eps
    return pd.DataFrame(rows)


def with_guarded(trace: "pd.DataFrame", modalities) -> "pd.DataFrame":
    """The training trace's steps with `guarded/<m>` recomputed from its logged Δε (whatever the run used)."""
    steps = trace.dropna(subset=[f"delta/{m}" for m in modalities]).copy()
    delta = torch.tensor(steps[[f"delta/{m}" for m in modalities]].to_numpy(dtype=float))
    guarded = torch.stack([guarded_balance_coefficients(d) for d in delta]) if len(delta) else delta
    for i, m in enumerate(modalities):
        steps[f"guarded/{m}"] = guarded[:, i].numpy()
    return steps


def noise_fraction(noise: "pd.DataFrame", trace: "pd.DataFrame", modalities,
                   quantities=("eps", "delta", "balance", "guarded")) -> "pd.DataFrame":
    """Per (quantity, modality): the robust variance of the step-to-step change at fixed weights (`noise`,
    from `batch_noise`) and along training (`trace`: the run's logged steps), and their ratio clipped to
    [0, 1], the fraction of the step-to-step variance that batch sampling alone produces."""
    import pandas as pd

    steps = with_guarded(trace, modalities)
    rows = []
    for q in quantities:
        for m in modalities:
            col = f"{q}/{m}"
            fixed, along = robust_var(np.diff(noise[col])), robust_var(np.diff(steps[col].to_numpy(dtype=float)))
            frac = min(1.0, fixed / along) if along > 0 and math.isfinite(fixed) else math.nan
            rows.append({"quantity": q, "modality": m, "sd_fixed_weights": float(np.std(noise[col], ddof=1)),
                         "robust_sd_fixed_weights": math.sqrt(robust_var(noise[col])),
                         "var_step_fixed": fixed, "var_step_training": along, "noise_fraction": frac})
    return pd.DataFrame(rows)


def noise_of_run(run_dir, batch_size: int | None = None, draws: int = 200, seed: int = 0) -> "pd.DataFrame":
    """`noise_fraction` of a completed CGGM run: its selected encoders and classifiers f_m, fixed, against
    its own trace (train split; `batch_size` None: the run's)."""
    from pathlib import Path

    run = load_run(run_dir)
    cfg = Config.from_dict(run["config"] | {"device": "cpu"})
    model, data = load_trained(run_dir)
    strategy = make_strategy(cfg.strategy, **cfg.strategy_kwargs)
    if not getattr(strategy, "uses_classifiers", False):
        raise ResultsError(f"{run_dir}: strategy {cfg.strategy!r} trains no classifiers f_m; pick a CGGM run")
    strategy.setup(model, data)
    strategy.load_state_dict(torch.load(Path(run_dir) / "best_strategy.pt", map_location="cpu", weights_only=False))
    feats, target = {}, None
    for m in model.encoders:
        feats[m], target = encoder_features(model, data.train, m)
    heads = {m: strategy.classifiers.heads[m].eval() for m in model.encoders}
    noise = batch_noise(heads, feats, target, batch_size or cfg.batch_size, draws, seed)
    return noise_fraction(noise, run["trace"], list(model.encoders))


def b_and_speed(cfg, every: int = 5, probe_split: str = "val") -> "pd.DataFrame":
    """Does B_m follow modality m's held-out learning speed? One training run of `cfg`, observed.

    `cfg` must train CGGM's classifiers f_m (strategy `cggm`, or `joint` with `observe=True`). It is
    trained once, without a run folder, and every `every` optimisation steps each f_m, reading its
    frozen encoder φ_m, is scored on a fixed held-out probe set: the same `probe_split` samples each
    time (`training.protocol.evaluate_classifiers`, the task's metric). Between two probes lies a window; one row
    per (window, modality): `balance` and `guarded`, the window's mean of the released and the guarded
    B_m recomputed from the Δε_m the run logged (whatever B the run applied), `eps`, the mean train-batch
    ε_m, and `speed`, the held-out metric's gain over the window divided by its steps (the task's
    selection metric, negated where lower is better, so a positive speed is an improvement). Observing
    changes nothing: the probe runs without gradients, on a forked random state, so the observed run
    trains exactly as an unobserved one (its final metrics are in the frame's `attrs["metrics"]`).
    """
    import pandas as pd

    if not isinstance(every, int) or isinstance(every, bool) or every < 1:
        raise ConfigError(f"b_and_speed: every must be a positive int (steps between probes), got {every!r}")
    probes, kept = [], {}

    def probe(step, model, strategy, data):
        if step % every:
            return
        if getattr(strategy, "classifiers", None) is None:
            raise ConfigError(f"b_and_speed: strategy {cfg.strategy!r} trains no classifiers f_m; use cggm, "
                              "or joint with observe=True")
        with torch.random.fork_rng(devices=[]), torch.no_grad():  # the training's random numbers stay its own
            if "batches" not in kept:
                kept["batches"] = list(getattr(data, probe_split))
            scores = evaluate_classifiers(model, strategy, kept["batches"], data.task)
        model.train()
        sign = 1.0 if data.task.higher_is_better else -1.0  # speed is an improvement (MAE falls)
        probes.append({"step": step} | {m: sign * float(v[data.task.select]) for m, v in scores.items()})

    result = run_experiment(cfg, None, progress=False, on_step=probe)
    modalities = [m for m in probes[0] if m != "step"] if probes else []
    if len(probes) < 2:
        raise ConfigError(f"b_and_speed: {len(probes)} probe(s) in {len(result.trace.steps())} steps; lower `every` "
                          f"({every}) or train longer")
    steps = result.trace.steps().dropna(subset=[f"delta/{m}" for m in modalities]).reset_index(drop=True)
    delta = torch.tensor(steps[[f"delta/{m}" for m in modalities]].to_numpy(dtype=float))
    released = torch.stack([balance_coefficients(d) for d in delta]).numpy()
    guarded = torch.stack([guarded_balance_coefficients(d) for d in delta]).numpy()
    rows = []
    for window, (before, after) in enumerate(zip(probes, probes[1:])):
        inside = ((steps["step"] >= before["step"]) & (steps["step"] < after["step"])).to_numpy()
        for i, m in enumerate(modalities):
            rows.append({"window": window, "step": after["step"], "modality": m,
                         "balance": float(np.mean(released[inside, i])), "guarded": float(np.mean(guarded[inside, i])),
                         "eps": float(steps.loc[inside, f"eps/{m}"].mean()),
                         "heldout": after[m], "speed": (after[m] - before[m]) / (after["step"] - before["step"])})
    frame = pd.DataFrame(rows).assign(dataset=cfg.dataset, every=every)
    frame.attrs["metrics"] = result.metrics
    return frame


def speed_of_runs(found: list[dict], method_names=("joint", "cggm"), every: int = 5) -> tuple:
    """`b_and_speed` for the first seed's run of each of `method_names` in `found` (as `pipeline_runs` or
    `runs` return them), each retrained from its config.json under observation; (rows,
    `speed_correlations` per method)."""
    import pandas as pd

    first = min(r["seed"] for r in found)
    chosen = [r for r in found if r["method"] in method_names and r["seed"] == first]
    if not chosen:
        raise ConfigError(f"speed_of_runs: no run of {list(method_names)} among the runs found")
    speed = pd.concat([b_and_speed(Config.from_dict(load_run(r["path"])["config"] | {"device": "cpu"}), every=every)
                       .assign(dataset=r["dataset"], method=r["method"]) for r in chosen], ignore_index=True)
    correlations = pd.concat([speed_correlations(part).assign(method=method)
                              for method, part in speed.groupby("method", sort=False)], ignore_index=True)
    return speed, correlations


def _centred(part: "pd.DataFrame", columns) -> "pd.DataFrame":
    """`columns` minus their window's mean over modalities (what CGGM's rule compares across modalities)."""
    return part.assign(**{c: part[c] - part.groupby("window")[c].transform("mean") for c in columns})


def speed_correlations(speed: "pd.DataFrame") -> "pd.DataFrame":
    """Spearman correlations of `b_and_speed`'s rows, per dataset and B (released, guarded):
    `across_windows`, B_m against its own speed over the windows, per modality; `within_window`, the
    question CGGM's rule rests on: B_m is large for the modality whose train-batch accuracy rose least,
    and CGGM raises its gradients; is that the modality learning slowest on held-out data? (B_m and
    speed centred on the window's mean over modalities, pooled.) If B_m measures held-out learning
    speed, rho is negative. Under CGGM the boost itself speeds the boosted modality up, which pulls
    rho up; a run that only observes B_m (`joint` with `observe=True`) has no such feedback."""
    import pandas as pd
    from scipy.stats import spearmanr

    rows = []
    for dataset, part in speed.groupby("dataset", sort=False):
        for b in ("balance", "guarded"):
            for m, sub in part.groupby("modality", sort=False):
                r = spearmanr(sub[b], sub["speed"])
                rows.append({"dataset": dataset, "B": b, "kind": "across_windows", "modality": m, "n": len(sub),
                             "rho": float(r.statistic), "p": float(r.pvalue)})
            centred = _centred(part, (b, "speed"))
            r = spearmanr(centred[b], centred["speed"])
            rows.append({"dataset": dataset, "B": b, "kind": "within_window", "modality": "all", "n": len(centred),
                         "rho": float(r.statistic), "p": float(r.pvalue)})
    return pd.DataFrame(rows)


def speed_figure(speed: "pd.DataFrame", notes: dict | None = None):
    """Per dataset: window-mean guarded B_m (x) against held-out learning speed (y), one colour per
    modality, both centred on the window's mean over modalities (what CGGM's rule compares)."""
    import matplotlib.pyplot as plt

    parts = dict(tuple(speed.groupby("dataset", sort=False)))
    fig, axes = plt.subplots(1, len(parts), figsize=(3.6 * len(parts), 3.2), squeeze=False)
    for ax, (dataset, part) in zip(axes[0], parts.items()):
        centred = _centred(part, ("guarded", "speed"))
        for m, sub in centred.groupby("modality", sort=False):
            ax.scatter(sub["guarded"], 100 * sub["speed"], s=10, label=m)
        ax.axhline(0, color="grey", lw=0.6)
        ax.axvline(0, color="grey", lw=0.6)
        ax.set_xlabel("guarded B_m − window mean", fontsize=8)
        ax.set_ylabel("held-out gain − window mean (points/step)", fontsize=8)
        ax.set_title(dataset, fontsize=9)
        ax.legend(fontsize=6, markerscale=0.8)
        note = (notes or {}).get(dataset)
        if note:
            ax.annotate(note, (0.02, 0.02), xycoords="axes fraction", fontsize=7, color="firebrick")
    fig.suptitle("Does a large B_m point at the modality learning slowest on held-out data? (then: falling)",
                 fontsize=9)
    fig.tight_layout()
    return fig


def noise_figure(noise: "pd.DataFrame", notes: dict | None = None):
    """Per dataset and batch size: the fraction of each quantity's step-to-step variance along training
    that batch sampling alone produces (`noise_fraction`), one point per modality, median as a bar."""
    import matplotlib.pyplot as plt

    parts = dict(tuple(noise.groupby(["dataset", "batch_size"], sort=False)))
    fig, axes = plt.subplots(1, len(parts), figsize=(3.2 * len(parts), 3.0), squeeze=False, sharey=True)
    for ax, ((dataset, batch), part) in zip(axes[0], parts.items()):
        quantities = list(dict.fromkeys(part["quantity"]))
        for x, q in enumerate(quantities):
            values = 100 * part.loc[part["quantity"] == q, "noise_fraction"].to_numpy(dtype=float)
            ax.bar(x, np.nanmedian(values), color="lightsteelblue")
            ax.scatter(np.full(len(values), x), values, s=8, color="black", zorder=3)
        ax.set_xticks(range(len(quantities)), ["ε_m" if q == "eps" else "Δε_m" if q == "delta" else
                                               "B_m released" if q == "balance" else "B_m guarded" for q in quantities],
                      rotation=30, ha="right", fontsize=7)
        ax.set_ylim(0, 105)
        note = (notes or {}).get(dataset)
        ax.set_title(f"{dataset}, batch {batch}" + (f"\n{note}" if note else ""), fontsize=8)
    axes[0][0].set_ylabel("batch noise / step-to-step variance (%)", fontsize=8)
    fig.suptitle("How much of each quantity's step-to-step change is batch noise", fontsize=9)
    fig.tight_layout()
    return fig


def describe_speed(correlations: "pd.DataFrame") -> str:
    """Markdown sentences from `speed_correlations`'s numbers."""
    lines = []
    for dataset, part in correlations.groupby("dataset", sort=False):
        within = part[part["kind"] == "within_window"].set_index("B")
        across = part[part["kind"] == "across_windows"]
        per = ", ".join(f"{m} {r:+.2f}" for m, r in zip(across.loc[across["B"] == "guarded", "modality"],
                                                         across.loc[across["B"] == "guarded", "rho"]))
        lines.append(f"**{dataset}.** Within a window, B_m and the held-out learning speed (negative if B_m "
                     f"singles out the modality learning slowest, as CGGM intends) have a Spearman "
                     f"correlation of {within.loc['balance', 'rho']:+.2f} (released B_m, p = {within.loc['balance', 'p']:.2g}) "
                     f"and {within.loc['guarded', 'rho']:+.2f} (guarded, p = {within.loc['guarded', 'p']:.2g}) over "
                     f"{int(within.loc['guarded', 'n'])} (window, modality) pairs; per modality across windows "
                     f"(guarded): {per}.")
    return "\n\n".join(lines)


def _pts(x) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{100 * x:+.1f}"


def describe_gaps(table: "pd.DataFrame", reference: str = "joint") -> str:
    """Markdown sentences, generated from `summary`'s numbers: the gap `reference` training leaves per
    modality, then per method what moved beyond its 95% interval against `reference` (same seeds)."""
    lines = []
    for dataset, part in table.groupby("dataset", sort=False):
        per = part[part["modality"] != "fused"]
        ref = per[per["method"] == reference]
        n = int(part["n"].max())
        gaps = ", ".join(f"{m} {_pts(g)} [{_pts(lo)}, {_pts(hi)}]"
                         for m, g, lo, hi in zip(ref["modality"], ref["gap"], ref["gap_low"], ref["gap_high"]))
        below = int((ref["gap_high"] < 0).sum())
        lines.append(f"**{dataset}** ({n} seeds). Under {reference} training the linear probe on each frozen encoder "
                     f"sits, relative to the same encoder trained alone (points, 95% CI): {gaps}; {below} of "
                     f"{len(ref)} modalities are below their unimodal level beyond the interval.")
        for method, sub in part[part["method"] != reference].groupby("method", sort=False):
            mods = sub[sub["modality"] != "fused"]
            up = list(mods.loc[mods["vs_joint_low"] > 0, "modality"])
            down = list(mods.loc[mods["vs_joint_high"] < 0, "modality"])
            fused = sub[sub["modality"] == "fused"].iloc[0]
            verdict = ("no modality's probe moved beyond its interval" if not up and not down else
                       "; ".join(x for x in (f"probe higher on {', '.join(up)}" if up else "",
                                             f"lower on {', '.join(down)}" if down else "") if x))
            lines.append(f"- {method} vs {reference}: {verdict}; fused test accuracy {_pts(fused['vs_joint'])} points "
                         f"[{_pts(fused['vs_joint_low'])}, {_pts(fused['vs_joint_high'])}].")
    return "\n\n".join(lines)


def describe_noise(noise: "pd.DataFrame", label: str = "") -> str:
    """Markdown sentences from `noise_fraction`'s numbers (one run, one batch size)."""
    def median(q, col):
        return float(noise.loc[noise["quantity"] == q, col].median())

    return (f"{label}At fixed weights, one batch's accuracy ε_m has a median standard deviation of "
            f"{median('eps', 'sd_fixed_weights'):.3f} across batches and Δε_m one of {median('delta', 'sd_fixed_weights'):.3f}; "
            f"the released B_m spreads by {median('balance', 'robust_sd_fixed_weights'):.2f} (robust sd: its tails are "
            f"unbounded) and the guarded B_m by "
            f"{median('guarded', 'sd_fixed_weights'):.2f} with nothing trained. Batch sampling alone accounts for a median "
            f"{100 * median('balance', 'noise_fraction'):.0f}% of the released B_m's step-to-step variance along training "
            f"({100 * median('guarded', 'noise_fraction'):.0f}% for the guarded B_m, "
            f"{100 * median('delta', 'noise_fraction'):.0f}% for Δε_m).")


def write(found: list[dict], out) -> "pd.DataFrame":
    """Probe the runs `found` and write <out>/imbalance_study.{csv,md,tex} and .{png,pdf}; the summary."""
    from pathlib import Path

    from ..analysis import figures, tables

    long = frame(found)
    table = summary(long)
    notes = {d: "STAND-IN data" if s else "synthetic data" if d.startswith("synthetic") else "real data"
             for d, s in long.groupby("dataset")["standin"].any().items()}
    tables.save(table, Path(out) / "imbalance_study", "Held-out utilisation (linear probe on frozen encoders) and "
                "fused accuracy", notes=[f"{d}: {n}" for d, n in notes.items()])
    figures.save(gap_figure(table, notes), Path(out) / "imbalance_study")
    return table


#: the blocks of docs/evidence.md that `evidence_blocks` writes, and the tables each is read from
EVIDENCE_TABLES = {"study": "imbalance_study.csv", "noise": "imbalance_noise.csv", "speed": "imbalance_speed.csv"}


def evidence_blocks(tables_dir) -> dict[str, str]:
    """docs/evidence.md's measured text, generated from a results folder's tables (`make reproduce` writes
    them to results/smoke/tables): {"study": gaps and paired differences, "noise": B_m's batch noise,
    "speed": B_m against held-out learning speed}."""
    from pathlib import Path

    import pandas as pd

    folder = Path(tables_dir)
    missing = [name for name in EVIDENCE_TABLES.values() if not (folder / name).is_file()]
    if missing:
        raise ResultsError(f"{folder}: missing {missing}; run `make reproduce` (or notebook 41) first, which writes them")
    read = {block: pd.read_csv(folder / name) for block, name in EVIDENCE_TABLES.items()}
    source = f"*Written by `python -m cggmlib.repro.study --docs docs/evidence.md --tables {tables_dir}`.*"
    noise = read["noise"]
    noise_text = "\n\n".join(describe_noise(part, f"**{dataset}, batches of {size}.** ")
                              for (dataset, size), part in noise.groupby(["dataset", "batch_size"], sort=False))
    speed = read["speed"][read["speed"]["kind"] == "within_window"]
    rows = ["| run | dataset | released B_m | guarded B_m | pairs |", "|---|---|---|---|---|"]
    for (method, dataset), part in speed.groupby(["method", "dataset"], sort=False):
        by = part.set_index("B")
        cells = [f"{by.loc[b, 'rho']:+.2f} ({_p(by.loc[b, 'p'])})" for b in ("balance", "guarded")]
        rows.append(f"| {method} | {dataset} | {cells[0]} | {cells[1]} | {int(by.loc['guarded', 'n'])} |")
    return {"study": f"{source}\n\n{describe_gaps(read['study'])}", "noise": f"{source}\n\n{noise_text}",
            "speed": f"{source}\n\n" + "\n".join(rows)}


def _p(p: float) -> str:
    return "p < 1e-4" if p < 1e-4 else f"p = {p:.2g}"  # the table keeps 4 decimals


def write_evidence(doc, tables_dir) -> None:
    """Replace the generated blocks of `doc` (docs/evidence.md) with `evidence_blocks(tables_dir)`."""
    from ..files import write_block

    for name, text in evidence_blocks(tables_dir).items():
        write_block(doc, text, f"evidence-{name}")


def main(argv=None) -> int:
    """`python -m cggmlib.repro.study`: train (or reuse) the study's runs, write its table and figure, print the text."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m cggmlib.repro.study", description=main.__doc__)
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=sorted(DATASETS))
    p.add_argument("--strategies", nargs="+", default=list(SMOKE_METHODS), help="as cggm compare; all: every one")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=None, help="default: the preset's")
    p.add_argument("--preset", default="smoke")
    p.add_argument("--data-root", default="data")
    p.add_argument("--results", default="results/study")
    p.add_argument("--speed-every", type=int, default=5, help="steps between held-out probes when the first seed's "
                   "joint and cggm runs are retrained under observation (B_m against learning speed); 0: skip")
    p.add_argument("--docs", default=None, help="train nothing: write the measured blocks of this Markdown file "
                   "(docs/evidence.md) from the tables in --tables")
    p.add_argument("--tables", default="results/smoke/tables", help="with --docs: the folder holding "
                   "imbalance_study.csv, imbalance_noise.csv and imbalance_speed.csv (make reproduce writes them)")
    args = p.parse_args(argv)
    if args.docs:
        write_evidence(args.docs, args.tables)
        return 0
    torch.set_num_threads(1)
    found = runs(args.datasets, args.seeds, args.strategies, args.epochs, args.results, args.data_root, args.preset)
    table = write(found, args.results)
    print(table.to_string())
    print(describe_gaps(table))
    if args.speed_every:
        from pathlib import Path

        from ..analysis import tables

        speed, correlations = speed_of_runs(found, [m for m in ("joint", "cggm") if m in set(r["method"] for r in found)],
                                            args.speed_every)
        tables.save(correlations.round(4), Path(args.results) / "imbalance_speed",
                    "Spearman correlation of B_m with held-out learning speed")
        for method, part in correlations.groupby("method", sort=False):
            print(f"{method}: " + describe_speed(part))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
