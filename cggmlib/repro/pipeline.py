"""The reproduction pipeline: profiles, the runs every paper figure and table needs, and the notebook steps.

`cggm reproduce --profile smoke|paper|colab` (cggmlib/repro/jobs.py and steps.py execute what this module
plans) runs the notebooks in dependency order: data preparation (01_data_*), the worker grid (10_train, one run
each), then the reports (20–70) that read results/ and never train. Every report names the run
groups it reads; a group is a set of `RunSpec`s (dataset, strategy, variant, hyperparameters, seed).

A run lives in `results/<profile>/<dataset>/<label>/seed<k>/`, where `label` names the variant
(`cggm`, `joint`, `unimodal.text`, `cggm.rho1.2`, ...), and is keyed by its configuration
(`Config.key()`): a completed folder whose key matches is skipped, one of another configuration is
moved aside to `results/<profile>/.superseded/` and trained afresh.

Paper items (Guo et al., NeurIPS 2024): Tables 2–4 are the `main` group
(single-modality rows, joint training and every compared method of Sec. 4.3 on the four datasets),
Table 5 `table5`, Table 6 and Fig. 6 `table6` (IEMOCAP; ρ = 1.0, λ = 0.1 per a public summary), Fig. 5
`fig5` (ρ and λ sweeps on IEMOCAP; grid values unknown, ours below), Figs. 2–3 and 7 `dynamics`, Fig. 4
`fig4`, Table 8 `table8`; plus `audit` (variants, explosions, the BraTS magnitude bug) and `mfeat`.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..config import Config
from ..errors import ConfigError
from ..presets import PAPER_DATASETS, REGISTRY

#: dataset -> its modalities (read from the dataset registry, cggmlib/presets.py)
MODALITIES = {name: facts.modalities for name, facts in REGISTRY.items()}
#: the methods Tables 2–4 compare (paper Sec. 4.3), besides the single-modality rows
COMPARED = ("joint", "mrd", "mslr", "gblending", "greedy", "ogm", "agm", "pmr", "umt", "ume", "qmf",
            "reconboost", "cggm")
NOT_APPLICABLE = {("pmr", "regression"): "PMR needs class labels (per-class prototypes); MOSI is a regression task"}
ARTIFACTS = {"gradients": "gradients.npz", "memory": "memory.json"}
#: Table 6 (IEMOCAP): label -> CGGM options (ρ = 1.0, λ = 0.1 per a public summary)
ABLATION = {"cggm.magnitude": {"rho": 1.0, "lam": 0.0}, "cggm.direction": {"magnitude": False, "lam": 0.1},
            "cggm.both": {"rho": 1.0, "lam": 0.1}}
#: audit variants beside the official CGGM run
AUDIT = {"cggm.paper": {"variant": "paper"}, "cggm.guard": {"guard": True},
         "cggm.paper_guard": {"variant": "paper", "guard": True}}
#: each correction of the released method, switched on alone beside the official run: label ->
#: (strategy options, other Config fields, datasets); 60_audit shows their measured effect
FIXES = {
    "cggm.fix_scaled": ({"scaled": "encoder"}, {}, ("mosi", "brats2021")),
    "cggm.fix_head": ({"classifier_head": "two_layer"}, {}, ("mosi",)),
    "cggm.fix_precision": ({"precision": "float32"}, {}, ("synthetic", "mosi")),
    "cggm.fix_text_projection": ({}, {"model_kwargs": {"text_projection": "own"}}, ("food101",)),
    "cggm.fix_warmup": ({}, {"lr_warmup": "exclusive"}, ("brats2021",)),
    "cggm.fix_dice": ({}, {"task_kwargs": {"smooth_numerator": True}}, ("brats2021",)),
}
DRIVE = "/content/drive/MyDrive/cggm-companion"
#: the imbalance study's datasets (cggmlib/repro/study.py): name -> (dataset, data options)
STUDY_DATASETS = {"mfeat": ("mfeat", {}), "synthetic-imbalanced": ("synthetic", {"setting": "imbalanced"})}


@dataclass(frozen=True)
class Profile:
    """What one `cggm reproduce --profile NAME` trains and reports."""

    name: str
    preset: str
    seeds: tuple = (0,)
    datasets: tuple = PAPER_DATASETS
    methods: tuple = COMPARED
    unimodal: tuple = PAPER_DATASETS
    """datasets whose single-modality rows are trained"""
    mfeat_methods: tuple = ()
    mfeat_views: tuple = MODALITIES["mfeat"]
    """mfeat views trained alone"""
    audit_datasets: tuple = ("synthetic", "mosi", "iemocap")
    """datasets of the CGGM variants compared in the audit (BraTS has its own pair)"""
    audit_fixes: bool = True
    """train each correction of the released method alone (`FIXES`) for the audit's deviation table"""
    rho_grid: tuple = ()
    lam_grid: tuple = ()
    epochs: dict = field(default_factory=dict)
    """dataset -> epochs; absent: the preset's"""
    allow_standin: bool = False
    """data preparation writes a stand-in where the real data is absent"""
    standin_size: dict = field(default_factory=dict)
    """dataset -> size options of its stand-in writer (cggm make-standin --size)"""
    data_root: str = "data"
    """default data root; empty: <results>/<profile>/data (stand-ins are written there)"""
    results: str = "results"
    checkpoint_every: int = 0
    gradient_batches: int = 32
    threads: int | None = None
    """CPU threads per job (None: cores / jobs); tiny CPU models run fastest on one thread per job"""
    description: str = ""
    study_methods: tuple = COMPARED
    """strategies of the imbalance study (41_imbalance_study; `cggm` brings its guarded variant too)"""
    study_seeds: tuple = (0, 1, 2, 3, 4)
    study_epochs: dict = field(default_factory=dict)
    """dataset -> epochs of the study's runs; absent: the preset's (the imbalance needs full-length runs)"""
    explainers: bool = True
    """also run the explainer notebooks (00_quickstart, 80_your_model), which train their own small examples"""
    max_steps: int = 0
    """dry runs only: optimisation steps per epoch (Config.max_steps); 0: whole epochs, as every real profile"""
    max_eval_batches: int = 0
    """dry runs only: batches evaluated per split (Config.max_eval_batches); 0: all"""
    batch_size: dict = field(default_factory=dict)
    """dry runs only: dataset -> batch size replacing the preset's (where the paper batch does not fit this machine)"""
    reuse_shapes: bool = False
    """dry runs only: a run with the same (dataset, strategy, model, batch) shape as one already trained is
    not trained again; its folder is a labelled copy of the first (cggmlib/repro/dryrun.py)"""

    def epochs_for(self, dataset: str) -> int | None:
        return self.epochs.get(dataset)


_MFEAT_ALL = ("joint", "cggm", "mrd", "mslr", "gblending", "greedy", "ogm", "ogm_ge", "agm", "pmr", "umt", "ume",
              "qmf", "reconboost", "mmpareto")
PROFILES = {
    "smoke": Profile("smoke", "smoke", seeds=(0,), methods=("joint", "cggm"), unimodal=("food101", "iemocap"),
                     mfeat_methods=_MFEAT_ALL, rho_grid=(0.8, 1.3), lam_grid=(0.05, 0.2),
                     epochs={"synthetic": 4, "mfeat": 4, "mosi": 2, "iemocap": 2, "food101": 2, "brats2021": 1},
                     allow_standin=True, data_root="", gradient_batches=8, threads=1,
                     study_methods=("joint", "cggm"), study_seeds=(0, 1), study_epochs={"synthetic": 20, "mfeat": 20},
                     description="stand-ins in the real formats, mfeat and synthetic; CPU; minutes"),
    "paper": Profile("paper", "paper", seeds=(0, 1, 2), mfeat_methods=_MFEAT_ALL,
                     rho_grid=(0.8, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4), lam_grid=(0.01, 0.05, 0.1, 0.15, 0.2, 0.25),
                     description="real data, the paper preset (official-code Table 7), 3 seeds; GPU"),
}
#: the smallest grid that still writes every figure and table: the test suite's end-to-end run
PROFILES["ci"] = dataclasses.replace(PROFILES["smoke"], name="ci", unimodal=("iemocap",), mfeat_methods=("joint", "cggm", "ogm"),
                                     mfeat_views=("fou", "mor"), audit_datasets=("synthetic",), rho_grid=(1.3,),
                                     lam_grid=(0.2,), gradient_batches=4,  # sweeps = the main CGGM run
                                     standin_size={"iemocap": {"utterances": 120, "long_audio": 1},
                                                   "mosi": {"train": 120, "valid": 30, "test": 50, "noalign": False},
                                                   "food101": {"train": 120, "test": 40}},
                                     epochs={"synthetic": 2, "mfeat": 2, "mosi": 1, "iemocap": 1, "food101": 1,
                                             "brats2021": 1},
                                     explainers=False,  # the quickstart has its own test
                                     study_seeds=(0,), study_epochs={"synthetic": 2, "mfeat": 2},
                                     audit_fixes=False,  # the corrections have their own tests
                                     description="the smoke profile's smallest grid (the test suite's end-to-end run)")
PROFILES["colab"] = dataclasses.replace(PROFILES["paper"], name="colab", data_root=f"{DRIVE}/data",
                                        results=f"{DRIVE}/results", checkpoint_every=200,
                                        description="paper settings; results and checkpoints on Google Drive, resumed")

#: full-size stand-ins: the real per-sample shapes (MOSI also the real split sizes and IEMOCAP the real
#: number of utterances); Food-101 and BraTS hold fewer samples than the real sets (cggmlib/repro/dryrun.py)
FULL_SIZE_STANDINS = {"mosi": {"train": 1284, "valid": 229, "test": 686, "seq_len": 50, "noalign": False},
                      "iemocap": {"utterances": 5531},
                      "food101": {"classes": 101, "train": 1010, "test": 202, "image_size": 224, "hidden": 768},
                      "brats2021": {"cases": 8, "size": 240, "depth": 155}}
PROFILES["dryrun"] = dataclasses.replace(
    PROFILES["paper"], name="dryrun", allow_standin=True, data_root="", standin_size=FULL_SIZE_STANDINS,
    epochs={d: 1 for d in (*PAPER_DATASETS, "synthetic", "mfeat")}, max_steps=2, max_eval_batches=1,
    batch_size={"brats2021": 2}, reuse_shapes=True, gradient_batches=1, threads=None, explainers=False,
    description="the paper grid on full-size stand-ins, 2 steps and 1 evaluation batch per run, runs of one "
                "shape trained once; CPU; checks the pipeline, measures nothing")


def get_profile(name: str) -> Profile:
    if name not in PROFILES:
        raise ConfigError(f"unknown profile {name!r}; choose from {sorted(PROFILES)}")
    return PROFILES[name]


@dataclass(frozen=True)
class RunSpec:
    """One training run of the grid: a Config plus where it lives and what else it must write."""

    dataset: str
    strategy: str
    label: str
    seed: int = 0
    kwargs: tuple = ()
    """strategy options as sorted (name, value) pairs (hashable)"""
    epochs: int | None = None
    groups: frozenset = frozenset()
    artifacts: frozenset = frozenset()
    """extra result files: gradients (Fig. 4), memory (Table 8)"""
    settings: tuple = ()
    """other Config fields as sorted (name, value) pairs, dicts as sorted pairs too (hashable)"""

    @property
    def strategy_kwargs(self) -> dict:
        return dict(self.kwargs)

    @property
    def other_settings(self) -> dict:
        """`settings` as Config keyword arguments (the worker notebook's `settings` parameter)."""
        return {k: dict(v) if isinstance(v, tuple) else v for k, v in self.settings}

    def config(self, profile: Profile, data_root: str | None = None) -> Config:
        other = self.other_settings
        return Config(dataset=self.dataset, strategy=self.strategy, strategy_kwargs=self.strategy_kwargs,
                      preset=profile.preset, data_root=str(data_root or profile.data_root), epochs=self.epochs,
                      seed=self.seed, checkpoint_every=profile.checkpoint_every, max_steps=profile.max_steps,
                      max_eval_batches=profile.max_eval_batches, batch_size=profile.batch_size.get(self.dataset),
                      **other)

    def path(self, results, profile: Profile) -> Path:
        return Path(results) / profile.name / self.dataset / self.label / f"seed{self.seed}"


def grid(profile: Profile) -> list[RunSpec]:
    """Every run the profile's figures and tables need, each configuration once (groups merged)."""
    specs: list[RunSpec] = []
    first = profile.seeds[:1]

    def add(dataset, strategy, label, groups, seeds=profile.seeds, artifacts=(), settings=None, epochs=None, **kwargs):
        if strategy == "joint":
            kwargs = {"observe": True} | kwargs  # the classifiers f_m are trained passively and logged
        if strategy in ("umt", "ume") and profile.epochs_for(dataset):
            kwargs = {"teacher_epochs": profile.epochs_for(dataset)} | kwargs  # teachers as long as the students
        for seed in seeds:
            specs.append(RunSpec(dataset, strategy, label, seed, tuple(sorted(kwargs.items())),
                                 epochs or profile.epochs_for(dataset), frozenset(groups), frozenset(artifacts),
                                 tuple(sorted((k, tuple(sorted(v.items())) if isinstance(v, dict) else v)
                                              for k, v in (settings or {}).items()))))

    for d in profile.datasets:
        if d in profile.unimodal:
            for m in MODALITIES[d]:
                add(d, "unimodal", f"unimodal.{m}", {"main"}, modality=m)
        for s in profile.methods:
            if not_applicable(s, d) is None:
                add(d, s, s, {"main"})
    for m in MODALITIES["iemocap"]:
        add("iemocap", "unimodal", f"unimodal.{m}", {"table5"}, modality=m)
    for s in ("joint", "cggm"):
        add("iemocap", s, s, {"table5", "table6", "fig5"})
    for label, kw in ABLATION.items():
        add("iemocap", "cggm", label, {"table6"}, **kw)
    for rho in profile.rho_grid:
        add("iemocap", "cggm", f"cggm.rho{rho:g}", {"fig5"}, rho=rho)
    for lam in profile.lam_grid:
        add("iemocap", "cggm", f"cggm.lam{lam:g}", {"fig5"}, lam=lam)
    for d in ("mosi", "iemocap"):
        for s in ("joint", "cggm"):
            add(d, s, s, {"dynamics"}, seeds=first)
    for d in PAPER_DATASETS:
        add(d, "cggm", "cggm", {"fig4", "table8"}, seeds=first, artifacts={"gradients", "memory"})
    for d in profile.audit_datasets:
        add(d, "cggm", "cggm", {"audit"}, seeds=first)
        for label, kw in AUDIT.items():
            add(d, "cggm", label, {"audit"}, seeds=first, **kw)
    add("brats2021", "cggm", "cggm", {"audit"}, seeds=first)
    for label, (kw, settings, datasets) in FIXES.items() if profile.audit_fixes else ():
        for d in datasets:
            add(d, "cggm", "cggm", {"audit"}, seeds=first)  # the official run it is compared with
            add(d, "cggm", label, {"audit"}, seeds=first, settings=settings, **kw)
    for m in profile.mfeat_views:
        add("mfeat", "unimodal", f"unimodal.{m}", {"mfeat"}, seeds=first, modality=m)
    for s in profile.mfeat_methods:
        add("mfeat", s, s, {"mfeat"}, seeds=first)
    # the study last: a run it shares with another group keeps that group's label (and folder)
    for name, (d, options) in STUDY_DATASETS.items():  # 41_imbalance_study: every method beside unimodal
        study = dict(seeds=profile.study_seeds, settings={"data_kwargs": options} if options else None)
        epochs = {"epochs": profile.study_epochs.get(d)} if d in profile.study_epochs else {}
        for m in MODALITIES[d]:
            add(d, "unimodal", f"study.{name}.unimodal.{m}", {"study"}, modality=m, **study, **epochs)
        for s in profile.study_methods:
            if not_applicable(s, d) is None:
                add(d, s, f"study.{name}.{s}", {"study"}, **study, **epochs)
            if s == "cggm":
                add(d, s, f"study.{name}.cggm.guard", {"study"}, guard=True, **study, **epochs)
    return _merge(specs, profile)


def not_applicable(strategy: str, dataset: str) -> str | None:
    """Why `strategy` is undefined on `dataset` (tables print "n/a" with it), or None."""
    return NOT_APPLICABLE.get((strategy, REGISTRY[dataset].kind))


def _merge(specs: list[RunSpec], profile: Profile) -> list[RunSpec]:
    by_key: dict[str, RunSpec] = {}
    for s in specs:
        key = s.config(profile).key()
        if key in by_key:
            old = by_key[key]
            by_key[key] = dataclasses.replace(old, groups=old.groups | s.groups, artifacts=old.artifacts | s.artifacts)
        else:
            by_key[key] = s
    out = list(by_key.values())
    seen: dict = {}
    for s in out:
        where = (s.dataset, s.label, s.seed)
        if where in seen:
            raise ConfigError(f"profile {profile.name}: label {s.label!r} names two configurations on {s.dataset}")
        seen[where] = s
    return out


@dataclass(frozen=True)
class Step:
    """One notebook execution: data preparation, a worker run, or a report."""

    name: str
    notebook: str
    kind: str
    """data | worker | report | explainer (a notebook that trains its own small example)"""
    groups: tuple = ()
    outputs: tuple = ()
    """paper items it writes: fig2 … fig7, table1 … table8"""
    dataset: str | None = None
    spec: RunSpec | None = None
    done: str = ""
    """explainers: the file, under their folder <profile>/<groups[0]>/, whose presence means complete"""


DATA_STEPS = tuple(Step(f"01_data_{d}", f"01_data_{d}.ipynb", "data", dataset=d) for d in PAPER_DATASETS)
REPORTS = (
    Step("20_main_results", "20_main_results.ipynb", "report", ("main",), ("table1", "table2", "table3", "table4")),
    Step("21_classifier_accuracy", "21_classifier_accuracy.ipynb", "report", ("table5",), ("table5",)),
    Step("30_dynamics", "30_dynamics.ipynb", "report", ("dynamics", "table6"), ("fig2", "fig3", "fig6", "fig7")),
    Step("31_gradient_tsne", "31_gradient_tsne.ipynb", "report", ("fig4",), ("fig4",)),
    Step("40_ablations", "40_ablations.ipynb", "report", ("table6", "fig5"), ("fig5", "table6")),
    Step("50_hyperparameters_memory", "50_hyperparameters_memory.ipynb", "report", ("main", "table8"),
         ("table7", "table8")),
    Step("60_audit", "60_audit.ipynb", "report", ("audit",)),
    Step("41_imbalance_study", "41_imbalance_study.ipynb", "report", ("study",)),
    Step("70_mfeat_imbalance", "70_mfeat_imbalance.ipynb", "report", ("mfeat",)),
)


#: each trains its own small example (about a minute): run with the reports, never in render-only mode
EXPLAINERS = (Step("00_quickstart", "00_quickstart.ipynb", "explainer", ("quickstart",), done="summary.csv"),
              Step("80_your_model", "80_your_model.ipynb", "explainer", ("your_model",), done="summary.json"))


def worker_step(spec: RunSpec) -> Step:
    return Step(f"10_train:{spec.dataset}/{spec.label}/seed{spec.seed}", "10_train.ipynb", "worker",
                tuple(sorted(spec.groups)), dataset=spec.dataset, spec=spec)


def plan(profile: Profile, only: list[str] | None = None, render_only: bool = False) -> list[Step]:
    """The steps to execute, in dependency order: data, workers, reports.

    `only` selects by notebook name or number (`30_dynamics`, `30`, `dynamics`), by paper item
    (`fig5`, `table6`), by group (`audit`), by dataset for data steps (`01_data_mosi`, `data`) or
    `train` (every worker); a selected report brings the workers and data steps it depends on.
    """
    specs = grid(profile)
    reports = [r for r in REPORTS if not only or any(_matches(r, t) for t in only)]
    wanted_groups = {g for r in reports for g in r.groups}
    workers = [s for s in specs if s.groups & wanted_groups or (only and "train" in only) or not only]
    data = [d for d in DATA_STEPS if (not only and d.dataset in {s.dataset for s in specs})
            or (only and (any(_matches(d, t) for t in only) or d.dataset in {s.dataset for s in workers}))]
    if only:
        known = [t for t in only if t == "train" or any(_matches(s, t) for s in (*REPORTS, *DATA_STEPS, *EXPLAINERS))]
        unknown = sorted(set(only) - set(known))
        if unknown:
            names = [s.name for s in (*EXPLAINERS, *DATA_STEPS, *REPORTS)]
            raise ConfigError(f"--only: nothing matches {unknown}; use notebook names {names}, paper items "
                              "fig2..fig7 / table1..table8, groups (main, audit, mfeat, ...) or 'train'")
    explainers = [e for e in EXPLAINERS if (profile.explainers and not only) or any(_matches(e, t) for t in only or ())]
    if render_only:
        return reports
    return [*data, *(worker_step(s) for s in workers), *explainers, *reports]


def _matches(step: Step, token: str) -> bool:
    if re.fullmatch(r"(fig|table)\d", token):  # a paper item: the report that writes it
        return token in step.outputs
    number, _, words = step.name.partition("_")
    return token in (step.name, number, words) or token in step.groups \
        or (step.kind == "data" and token in ("data", step.dataset))


def find(profile: Profile, dataset: str, strategy: str, seed: int | None = None, **kwargs) -> RunSpec | None:
    """The grid's run of this configuration (whatever its label), or None."""
    if strategy == "joint":
        kwargs = {"observe": True} | kwargs
    probe = RunSpec(dataset, strategy, "?", profile.seeds[0] if seed is None else seed, tuple(sorted(kwargs.items())),
                    profile.epochs_for(dataset))
    key = probe.config(profile).key()
    return next((s for s in grid(profile) if s.dataset == dataset and s.config(profile).key() == key), None)


def sweep_labels(profile: Profile, dataset: str = "iemocap") -> dict:
    """Fig. 5: {"rho": {value: (dataset, label)}, "lam": {...}} of the profile's sweeps."""
    out = {}
    for param, values in (("rho", profile.rho_grid), ("lam", profile.lam_grid)):
        found = {v: find(profile, dataset, "cggm", **{param: v}) for v in values}
        out[param] = {v: (dataset, s.label) for v, s in found.items() if s is not None}
    return out


__all__ = ["ARTIFACTS", "COMPARED", "EXPLAINERS", "MODALITIES", "PAPER_DATASETS", "PROFILES", "Profile", "REPORTS", "RunSpec",
           "Step", "find", "get_profile", "grid", "not_applicable", "plan", "sweep_labels"]
