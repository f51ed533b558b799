"""Where each baseline comes from: its released reference code, what matches, and every deviation.

`REFERENCES` is the one source of docs/baselines.md; regenerate that page with
    python -m cggmlib.modulation.references > docs/baselines.md
(tests/test_baselines_reference.py fails when the page and this module disagree). The numbers in the
"effect" column are computed here, by the strategies' own functions, when the page is rendered.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch


@dataclass(frozen=True)
class Deviation:
    """One way our strategy differs from its reference."""

    what: str
    """the difference, in one sentence"""
    option: str = ""
    """the strategy option that selects the other behaviour ("" where none does)"""
    effect: str = ""
    """what changes, with a number where one can be computed"""


@dataclass(frozen=True)
class Reference:
    """A baseline's provenance: the reference code read, what matches it and what does not."""

    strategies: tuple[str, ...]
    """registry names (`cggm compare --strategies ...`)"""
    paper: str
    code: str
    """repository@commit, or "no reference found" with what was searched"""
    files: tuple[str, ...]
    """file:line of the expressions we compared"""
    matches: tuple[str, ...]
    deviations: tuple[Deviation, ...]


def _ogm_tie(alpha: float = 0.8) -> str:
    from .ogm import ogm_coefficients

    tie = torch.tensor([1.0, 1.0])
    released = ogm_coefficients(tie, alpha)[0].item()
    skipped = ogm_coefficients(tie, alpha, skip_ties=True)[0].item()
    return f"at a tie with α = {alpha}: first modality k = {released:.3f} (default) vs {skipped:.3f} (skip_ties)"


def _pmr_clip(ratio: float = 1.2, alpha: float = 1.0) -> str:
    from .pmr import lag_coefficients

    score = torch.tensor([1.0, 1.0 / ratio])
    full = lag_coefficients(score, alpha)[0][1].item()
    clipped = lag_coefficients(score, alpha, clip=True)[0][1].item()
    return f"lagging modality at ρ = {ratio}, α = {alpha}: β = {full:.2f} (default) vs {clipped:.2f} (clip_weight)"


def _reconboost_stages(budget: int = 30) -> str:
    d = _defaults("reconboost", "stage_epochs", "rectify_epochs")
    per_stage = d["stage_epochs"] + d["rectify_epochs"]
    return (f"a {budget}-epoch run has {budget / per_stage:.2f} stages with the released lengths, "
            f"{budget / 2:.0f} with 1 + 1")


def _window(start: int, end: int) -> str:
    return f"epochs {start}..{end} counted from 0: {end - start + 1} epochs"


def _defaults(name: str, *fields_: str) -> dict:
    from . import strategy_class

    cls = strategy_class(name)
    return {f.name: f.default for f in fields(cls) if f.name in fields_}


def references() -> list[Reference]:
    """Every baseline's reference, with its effects computed from the current code."""
    greedy = _defaults("greedy", "start_epoch")["start_epoch"]
    agm = _defaults("agm", "start_epoch", "end_epoch")
    pmr = _defaults("pmr", "start_epoch", "end_epoch")
    return [
        Reference(
            ("ogm", "ogm_ge"), "Peng et al., CVPR 2022", "GeWu-Lab/OGM-GE_CVPR2022@343dc1d",
            ("main.py:105-106 (scores)", "main.py:119-124 (coefficients; a tie takes the else branch)",
             "main.py:132-148 (inclusive window, OGM-GE noise)", "main.py:41-43 (defaults)"),
            ("ρ and k = 1 − tanh(α·ρ) for ρ > 1 (Eq. 9, 10), including the jump at ρ = 1",
             "exact tie: the first modality (audio there) gets 1 − tanh(α·1)",
             "window modulation_starts ≤ epoch ≤ modulation_ends over epochs counted from 0",
             "OGM-GE noise N(0, std of the unscaled gradient + 1e-8)"),
            (Deviation("at an exact tie leave both encoders unscaled", "skip_ties=True", _ogm_tie()),
             Deviation("every parameter of the encoder is scaled (the released code scales 4-D conv kernels only)"),
             Deviation("M > 2: ρ_m = s_m / mean of the others' scores"),
             Deviation("the training loop clips the global gradient norm after the hook (the released code does not "
                       "clip); this is the loop's `grad_clip` setting, shared by every strategy"))),
        Reference(
            ("pmr",), "Fan et al., CVPR 2023", "fanyunfeng-bit/Modal-Imbalance-PMR@3615e48",
            ("main_Prototype_grad.py:158-160 (prototype scores)", "main_Prototype_grad.py:169-178 (coefficients, loss)",
             "main_Prototype_grad.py:383-442 (prototypes on len(loader)//10 batches, EMA at 435-441)",
             "main_Prototype_grad.py:532-557 (prototype schedule)",
             "GeWu-Lab/BalanceBenchmark@4c1482f balancemm/trainer/PMR_trainer.py:166-175 (same coefficients)"),
            ("β = α for the lagging modality, 0 for the leading one and at a tie",
             "prototypes of epochs 0 and 1 unsmoothed, EMA with μ from epoch 2 (the released loop passes the "
             "finished epoch's index)",
             f"window {_window(pmr['start_epoch'], pmr['end_epoch'])} (released defaults 0 and 100, counted from 0)",
             "prototype logits −‖z − c‖₂ and their cross-entropy"),
            (Deviation("β = α·clip(ρ − 1, 0, 1), BalanceBenchmark's form before its commit 59c3446", "clip_weight=True",
                       _pmr_clip()),
             Deviation("EMA already in epoch 1", "ema_from_epoch_1=True",
                       "epoch 1 uses (1 − μ)·c_new + μ·c_old instead of c_new"),
             Deviation("a class absent from the prototype batches keeps its previous prototype (released: 0/0 = NaN)"),
             Deviation("PER regulariser on the leading modality (absent from the released script)", "per_weight > 0"),
             Deviation("M > 2: ρ against the leading modality; segmentation: pixels are samples"))),
        Reference(
            ("greedy",), "Wu et al., ICML 2022", "nyukat/greedy_multimodal_learning@a190e03",
            ("src/framework.py:293 (epochs counted from 1)", "src/callbacks.py:240-267 (decision, unlock)",
             "configs/training_guided.gin:14-16 (epsilon 0.01, window 5, starting_epoch 2)"),
            (f"re-balancing unlocks in the second epoch: start_epoch = {greedy} counted from 0 is the released "
             "starting_epoch = 2 counted from 1",
             "the decide / `window` re-balancing steps / measure again cycle; α = 0.01, window = 5"),
            (Deviation("imbalance measured as conditional utilisation (zeroing a modality in the fusion module), "
                       "not MMTM bypass speeds: our models have no MMTM; α is on a different scale"),
             Deviation("re-balancing step: the other modalities' features are replaced by their detached batch mean"))),
        Reference(
            ("agm",), "Li et al., ICCV 2023", "Lingy12/AGM_ICCV2023@a24f2ce (the only copy in the stored index)",
            ("run/MOSEI_main.py:101-110 (ratios, coefficients)", "run/MOSEI_main.py:115 (inclusive window)",
             "run/MOSEI_main.py:324,336 (epochs counted from 1)", "run/CREMAD_main.py:151-152 (cap 10)",
             "utils/config.py:74-76 (window 0..20, α = 1)"),
            (f"window: {_window(agm['start_epoch'], agm['end_epoch'])}, the released [0, 20] over epochs counted from 1",
             "k = exp(α·min(r̂ − r, 10)) with r̂ from the running mean of the scores (updated after use)",
             "r = exp(2·(mean s − s_m)) for two modalities"),
            (Deviation("masking zeroes encoder features and reruns the fusion module (released: zeroed inputs, "
                       "whole network)"),
             Deviation("k scales every parameter gradient of encoder m (released: backward hooks on φ_m)"),
             Deviation("M > 2 by Shapley values with f(∅) = 0, as BalanceBenchmark's M-modality trainer"))),
        Reference(
            ("qmf",), "Zhang et al., ICML 2023", "QingyangZhang/QMF@fe6c4c6",
            ("RGBD-scene-recognition/models/QMF.py:67-74 (energy confidence, fusion)",
             "RGBD-scene-recognition/train_QMF_nyud2.py:57-77 (rank loss), 100-107 (loss)",
             "RGBD-scene-recognition/utils/crl_utils.py:47-70 (target, margin)"),
            ("w = 0.1·logsumexp(z); ŷ = Σ w_m z_m; L = CE(ŷ) + Σ CE(z_m) + λ Σ L_rank with λ = 0.1",
             "rank loss = MarginRankingLoss with the history gap as tolerance, neighbours by torch.roll"),
            (Deviation("the batch's own losses enter the history before ranking (released: after)"),
             Deviation("history min-max over the samples seen so far (released: the whole pre-allocated array, "
                       "zeros included)"),
             Deviation("regression and segmentation extensions (softplus confidence head; per-pixel energy)"))),
        Reference(
            ("umt",), "Du et al., ICML 2023",
            "no release by the authors found (searched: paper title, \"UMT\", \"uni-modal teacher\"); "
            "compared with GeWu-Lab/BalanceBenchmark@4c1482f",
            ("balancemm/trainer/UMT_trainer.py:130-148", "configs/trainer_config.yaml:62-66"),
            ("L = CE + weight · Σ_m MSE(teacher features, student features) with frozen unimodal teachers",),
            (Deviation("weight α = 1 by default (BalanceBenchmark: scaling = 10)", "alpha=10",
                       "alpha=10 gives BalanceBenchmark's weight"),
             Deviation("distillation in every epoch (BalanceBenchmark: epochs 0..80)"),
             Deviation("teachers trained by `unimodal` through the same loop and cached"))),
        Reference(
            ("ume",), "Du et al., ICML 2023",
            "no reference found (searched: paper title, \"UME\", \"uni-modal ensemble\"; BalanceBenchmark@4c1482f "
            "has no UME trainer)",
            (), ("the paper's description: average of frozen unimodal models' predictions",),
            (Deviation("learned ensemble weights instead of uniform ones", "weights=\"learned\""),)),
        Reference(
            ("reconboost",), "Hua et al., ICML 2024", "huacong/ReconBoost@14ab57a",
            ("train.py:57-77 (defaults)", "train.py:304-351 (boosting loss, GA term at 349)",
             "train.py:371-372 (rectification)"),
            ("4 boosting + 4 rectification epochs per stage, round-robin over modalities",
             "boosting loss (w₁ − w₂·q)·CE with w₁ = 5, w₂ = 1; GA term α = 0.5 on detached predictions (no gradient)"),
            (Deviation("GA term's gradient reaches f_m (the paper's intent)", "ga_gradient=True"),
             Deviation("shorter stages for small budgets", "stage_epochs=1, rectify_epochs=1", _reconboost_stages()),
             Deviation("one head per modality and the loop's optimizer for both phases (released: fresh SGD per phase)"),
             Deviation("the CE is not averaged over the class dimension (a constant 1/C scale)"))),
        Reference(
            ("mrd",), "named in the CGGM paper (Guo et al., NeurIPS 2024, Sec. 4.3)",
            "no reference found (searched: zrguo/CGGM@21e428c, \"modality random dropout\")",
            (), ("per sample and modality Bernoulli(p) dropping, never every modality of a sample",),
            (Deviation("p = 0.5 and zeroed inputs are our choices (no released default)", "p, where=\"feature\""),)),
        Reference(
            ("mmpareto",), "Wei & Hu, ICML 2024", "GeWu-Lab/MMPareto_ICML2024@a339db3",
            ("code/MMPareto.py:57-209 (train_epoch)", "code/MMPareto.py:165-174 (equal weights when cos > 0, else "
             "min-norm)", "code/MMPareto.py:178-207 (γ = 1.5, per-tensor magnitude rule)",
             "code/min_norm_solvers.py:9-24 (two-objective min-norm weight, clipped to [0.001, 0.999])",
             "GeWu-Lab/BalanceBenchmark@4c1482f balancemm/trainer/MMPareto_trainer.py:330-406 (the same step)"),
            ("L = L_mm + Σ_m L_m; encoders get 2·k_mm·g_mm + 2·k_m·g_m, heads and fusion their ordinary gradients",
             "(k_mm, k_m) = (½, ½) when cos(g_mm, g_m) > 0, else the two-objective min-norm weights",
             "per parameter tensor: ∇ ← 1.5 · max(‖g_mm + g_m‖ / ‖g_new‖, 1) · g_new"),
            (Deviation("one unimodal head per modality from `model.modality_classifier(m)` (the released model "
                       "has its audio and visual heads built in)"),
             Deviation("g_m taken with one autograd call and g_mm by subtraction (released: three backward passes); "
                       "the same numbers up to rounding"),
             Deviation("any task and any M (the unimodal loss is the task's own; released: CE, audio and visual)"))),
        Reference(
            ("gblending",), "Wang, Tran & Feiszli, CVPR 2020",
            "no release by the authors found (searched: paper title, \"gradient blending\", \"G-Blending\"); "
            "compared with GeWu-Lab/BalanceBenchmark@4c1482f",
            ("balancemm/trainer/GBlending_trainer.py:292-304 (training_step: Σ_k w_k · CE_k)",
             "balancemm/trainer/GBlending_trainer.py:306-376 (super_epoch_origin: |ΔG| / ΔO² at 366, "
             "normalised at 368-372)"),
            ("L = Σ_k w_k · L_task(head_k) over the M unimodal heads and the fused head",
             "w_k = ΔG_k / ΔO_k², normalised to sum 1, re-estimated every `super_epoch` = 10 epochs from copies "
             "that train head k alone"),
            (Deviation("ΔG_k ≤ 0 gives w_k = 0 (BalanceBenchmark takes |ΔG_k|, so a head that got worse on "
                       "validation still gains weight)"),
             Deviation("losses are means over samples (BalanceBenchmark sums batch losses, whose number differs "
                       "between train and validation)"),
             Deviation("the start point is the current model (BalanceBenchmark measures after the copy's first "
                       "epoch); ε = 1e-8 is added to ΔO²"),
             Deviation("a cheaper estimate from the run's own trajectory, without copies", "estimate=\"trajectory\""))),
        Reference(
            ("mslr",), "Yao & Mihalcea, Findings of ACL 2022",
            "no reference found (searched: paper title, \"modality-specific learning rates\", \"MSLR\"; "
            "BalanceBenchmark@4c1482f has no MSLR trainer)",
            (), ("the paper's three strategies: keep, smooth and dynamic per-encoder learning rates",
                 "keep: encoder m steps with s_m · η exactly, for SGD and Adam (tested against a per-group "
                 "learning rate)"),
            (Deviation("smooth: a per-branch plateau decay of s_m by `decay` (our reading of the paper)",
                       "variant=\"smooth\""),
             Deviation("dynamic: s_m ∝ branch m's validation loss over the mean (our reading of the paper)",
                       "variant=\"dynamic\""),
             Deviation("a branch's prediction is the fusion module fed that modality alone (exact for additive "
                       "late fusion, up to the bias)"))),
        Reference(
            ("unimodal",), "single-modality rows of the CGGM paper (Guo et al., NeurIPS 2024, Sec. 4.3-4.4)",
            "zrguo/CGGM@21e428c (a `Unimodal` model that the released scripts never call); compared with "
            "GeWu-Lab/BalanceBenchmark@4c1482f",
            ("zrguo/CGGM models/segmodel.py:330 (Unimodal: one backbone and its decoder)",
             "BalanceBenchmark balancemm/trainer/unimodal_trainer.py:90-102 (training_step: the task loss of one "
             "modality's model)"),
            ("one modality's encoder and its own head, trained alone on the task loss; the other encoders never run",),
            (Deviation("the encoder is the multimodal model's encoder m (same architecture and initialisation as in "
                       "joint training), not a separately defined network"),
             Deviation("the head is `model.modality_classifier(m)`, trained and clipped by the loop's optimizer"))),
        Reference(
            ("joint",), "plain joint training, the baseline every method modulates",
            "no modulation, so nothing to transcribe; compared with GeWu-Lab/BalanceBenchmark@4c1482f",
            ("balancemm/trainer/baseline_trainer.py:86-97 (training_step: the task loss of the fused output)",),
            ("one loss, the task loss of the fused prediction, backpropagated through every encoder",),
            (Deviation("any task loss (BalanceBenchmark: cross-entropy)"),)),
    ]


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render() -> str:
    """docs/baselines.md, from `references()`."""
    out = ["# Baselines and their released code", "",
           "Generated, not edited by hand: `python -m cggmlib.modulation.references > docs/baselines.md`",
           "(the source is `cggmlib/modulation/references.py`; a test fails when this page is stale).",
           "Epochs are counted from 0, as the training loop counts them; where a release counts from 1 the",
           "defaults are translated. A `differs` row names the option that switches to the behaviour it",
           "describes, or `(none)` where the difference is built in (the module docstring says why).", ""]
    for ref in references():
        out += [f"## {', '.join(f'`{s}`' for s in ref.strategies)}", "",
                f"{ref.paper}. Reference: {ref.code}.", ""]
        if ref.files:
            out += ["Compared with: " + "; ".join(f"`{f}`" for f in ref.files) + ".", ""]
        out += ["| | what | option | effect |", "|---|---|---|---|"]
        out += [f"| matches | {_cell(m)} | | |" for m in ref.matches]
        out += [f"| differs | {_cell(d.what)} | {_cell(f'`{d.option}`' if d.option else '(none)')} | {_cell(d.effect)} |"
                for d in ref.deviations]
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    print(render(), end="")
