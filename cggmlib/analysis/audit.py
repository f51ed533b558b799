"""The audit of the released CGGM code: every deviation (docs/methods.md), the coefficient's
explosions, the BraTS run whose magnitude scaling touches no parameter, and the measured effect of
each of our corrections of the released method (`fixes`).

Guo et al., NeurIPS 2024. Reference code: zrguo/CGGM (commit 21e428c): src/msatrain.py, src/foodtrain.py,
src/segtrain.py (the scaling loop that matches `'vision_encoder' in name`), src/eval_metrics.py.
"""
from __future__ import annotations

import math

import pandas as pd
import torch

from ..training.trace import Trace

#: the official code's parameter selection for the magnitude step (src/foodtrain.py, copied into src/segtrain.py)
OFFICIAL_SUBSTRINGS = ("vision_encoder", "text_encoder")

#: one row per deviation (docs/methods.md): what the released code does, what the companion does, where it is shown
DEVIATIONS = [
    ("D1", "cosine of output-layer weights, not gradients", "official: weights (as released); paper: gradients",
     "60_audit: cos_weight vs cos_grad from the traces"),
    ("D2", "L_gm built at step t, added at step t+1", "official: the same lag; paper: same step (double backward)",
     "cggmlib/modulation/cggm.py docstring; tests/test_cggm.py golden test"),
    ("D3", "ε measured on each training batch", "the same (both variants)", "traces: acc_head/m, delta/m"),
    ("D4", "no guard on Σ Δε: B explodes or flips sign", "official: unguarded; guard=True: positive-part gains",
     "60_audit: explosion counts per variant"),
    ("D5", "best validation (Food101: test) value printed; test never evaluated",
     "test metrics at the validation-selected epoch; the official number kept, labelled", "60_audit: official vs ours"),
    ("D6", "no shuffling of training data", "seeded reshuffle every epoch (loaders' shuffle=False restores it)",
     "explained: data cards"),
    ("D7", "modality counts hard-coded (3, 2, 4)", "any number of modalities, dict keyed by name", "explained"),
    ("D8", "encoders selected by name substring (MSA/Food projections not scaled)",
     "official: the same selection (scaled='released'); scaled='encoder' also scales each projection",
     "60_audit: corrections table; tests/test_cggm_released.py"),
    ("D9", "modulation before gradient clipping", "the same order", "cggmlib/train.py"),
    ("D10", "DataParallel re-wrapped per batch; CUDA hard-coded", "one device, CPU or CUDA", "explained"),
    ("D11", "README flag --lambda vs argparse --lamda; PYTHONPATH", "Config fields rho and lam; a package", "explained"),
    ("D12", "printed losses per batch; plateau patience taken from `when`", "per-sample mean losses; the same "
     "ReduceLROnPlateau (x0.1, patience 10)", "explained: cggmlib/training/optim.py"),
    ("D13", "seed 666, set after the MOSI loaders", "seed per run, set before data, model and loop", "run cards"),
    ("2.2", "MSA classifier applies proj1 twice; one 4-way IEMOCAP head", "official: the same head "
     "(classifier_head='released'); classifier_head='two_layer': proj1 → proj2; the same 4-way head",
     "60_audit: corrections table; cggmlib/models/msa.py docstring"),
    ("2.3", "Food101 text through the vision projection; test-set selection; no ViT normalisation",
     "the same projection (model option text_projection='image'; 'own' is the correction); dev split; "
     "ViT normalisation (option); see data_cards/food101.md", "60_audit: corrections table; data card"),
    ("P", "ε (scikit-learn accuracy) and B in float64; the BraTS Dice in float32",
     "official: the same dtypes (precision='released'); precision='float32' everywhere",
     "60_audit: corrections table; tests/test_cggm_released.py (cancelling gains)"),
    ("W", "BraTS LR warm-up np.linspace(start, base, W): base rate at step W − 1",
     "the same (Config lr_warmup='linspace'); 'exclusive' reaches it at step W", "60_audit: corrections table"),
    ("S", "soft Dice 2I / (P + T + s)", "the same; task option smooth_numerator=True: (2I + s) / (P + T + s)",
     "60_audit: corrections table"),
    ("2.4", "IEMOCAP audio padded to 350 frames; BraTS random slice at evaluation",
     "per-batch padding; a fixed evaluation slice per case (official protocol) or every slice", "data cards"),
    ("2.5a", "BraTS magnitude scaling matches no parameter (direction-only CGGM)",
     "official: the same (nothing scaled); scaled='encoder' scales all four encoders",
     "60_audit: reproduced, and the correction's effect"),
    ("2.5b", "BraTS best Dice never updates (prints Dice: 0)", "per-region Dice of the selected epoch", "60_audit: metrics"),
    ("2.5c", "SegLoss 0.5·CE + 0.5·(1 − Dice) vs paper Dice + 1·CE", "the code's 0.5/0.5 (task option)", "cggmlib/tasks.py"),
    ("PV", "paper: ρ inside B, ε = MAE for regression, gradient cosine", "variant='paper' implements them",
     "60_audit: official vs paper variant"),
]


#: deviation id -> the correction runs (pipeline.FIXES labels) that measure its effect
MEASURED_BY = {"D8": ("cggm.fix_scaled",), "2.5a": ("cggm.fix_scaled",), "2.2": ("cggm.fix_head",),
               "P": ("cggm.fix_precision",), "2.3": ("cggm.fix_text_projection",), "W": ("cggm.fix_warmup",),
               "S": ("cggm.fix_dice",)}


def deviations(corrections: pd.DataFrame | None = None) -> pd.DataFrame:
    """The deviation table; with `fixes(runs)`, a column with each correction's measured effect
    (test metric with the correction minus without it, per dataset and seed)."""
    table = pd.DataFrame(DEVIATIONS, columns=["id", "official code", "companion", "shown in"])
    if corrections is None:
        return table
    option = {label: FIX_NAMES[label][1] for label in FIX_NAMES}
    effect = []
    for dev in table["id"]:
        parts = []
        for label in MEASURED_BY.get(dev, ()):
            rows = corrections[corrections["correction"] == option[label]]
            if dev == "2.5a":
                rows = rows[rows["dataset"] == "brats2021"]
            parts += [f"{r.dataset} {r.metric} {r.difference:+.4g}" for r in rows.itertuples()]
        effect.append("; ".join(parts) if parts else ("not run" if dev in MEASURED_BY else ""))
    return table.assign(**{"measured effect of the correction": effect})


def name_matched(model, substrings=OFFICIAL_SUBSTRINGS) -> dict:
    """Parameters the official loop would rescale ({substring: count}) and the structural count per modality."""
    named = list(model.named_parameters())
    out = {f"'{s}' in name": sum(s in n for n, _ in named) for s in substrings}
    out |= {f"encoders[{m!r}]": sum(1 for _ in enc.parameters()) for m, enc in model.encoders.items()}
    return out | {"all parameters": len(named)}


@torch.no_grad()
def official_name_scaling(model, coeff: list[float], rho: float, substrings=OFFICIAL_SUBSTRINGS) -> int:
    """src/segtrain.py's magnitude step: grad *= coeff[i]·ρ for names containing substrings[i]; how many
    parameters it touched (0 on the BraTS model, whose encoders are not named so)."""
    touched = 0
    for name, p in model.named_parameters():
        for k, s in enumerate(substrings):
            if s in name and p.grad is not None:
                p.grad.mul_(coeff[k] * rho)
                touched += 1
                break
    return touched


def explosions(steps: pd.DataFrame, big: float = 10.0) -> dict:
    """How often the coefficient misbehaved in a run: steps with some |B_m| > big, some B_m < 0, the
    largest |B_m|, |L_gm| and loss, and the largest gradient norm before clipping (docs/methods.md, edge cases)."""
    cols = [c for c in steps.columns if c.startswith("balance/")]
    b = steps[cols].astype(float) if cols else pd.DataFrame(index=steps.index)
    lgm = steps["l_gm"].astype(float).abs() if "l_gm" in steps else pd.Series(dtype=float)
    return {"steps": len(steps), "|B| > %g" % big: int((b.abs() > big).any(axis=1).sum()) if cols else 0,
            "B < 0": int((b < 0).any(axis=1).sum()) if cols else 0, "max |B|": _max(b.abs().max(axis=1)) if cols else math.nan,
            "max |L_gm|": _max(lgm), "max loss": _max(steps["loss"].astype(float)),
            "max grad norm": _max(steps["grad_norm_total"].astype(float)) if "grad_norm_total" in steps else math.nan}


VARIANT_NAMES = {"cggm": "official", "cggm.paper": "paper", "cggm.guard": "official + guard",
                 "cggm.paper_guard": "paper + guard"}
#: our corrections of the released method (cggmlib.repro.pipeline.FIXES): label -> (what differs, the option)
FIX_NAMES = {
    "cggm.fix_scaled": ("which parameters ρ·B scales", "scaled='encoder'"),
    "cggm.fix_head": ("classifier head applies proj1 twice", "classifier_head='two_layer'"),
    "cggm.fix_precision": ("ε and B in float64", "precision='float32'"),
    "cggm.fix_text_projection": ("Food text through the image projection", "model text_projection='own'"),
    "cggm.fix_warmup": ("LR warm-up reaches base at W − 1", "lr_warmup='exclusive'"),
    "cggm.fix_dice": ("soft Dice without smoothing above", "task smooth_numerator=True"),
}


def fixes(runs: pd.DataFrame) -> pd.DataFrame:
    """Each correction beside the official run of the same dataset and seed: the test metric at the
    selected epoch with and without it, and the difference. Missing runs are listed as such."""
    done = runs[runs["done"]] if len(runs) else runs
    official = {(r.dataset, r.seed): r.metrics for r in done.itertuples() if r.label == "cggm"}
    rows = []
    for r in done.itertuples():
        if r.label not in FIX_NAMES or (r.dataset, r.seed) not in official:
            continue
        m, base = r.metrics, official[(r.dataset, r.seed)]
        select = m.get("selected_on", "val/acc").split("/", 1)[1]
        what, option = FIX_NAMES[r.label]
        rows.append({"released behaviour": what, "correction": option, "dataset": r.dataset, "seed": r.seed,
                     "metric": select, "official": _sig(base.get(select, math.nan)),
                     "with the correction": _sig(m.get(select, math.nan)),
                     "difference": _sig(m.get(select, math.nan) - base.get(select, math.nan)), "stand-in": r.standin})
    columns = ["released behaviour", "correction", "dataset", "seed", "metric", "official", "with the correction",
               "difference", "stand-in"]
    return pd.DataFrame(rows, columns=columns)


def variants(runs: pd.DataFrame) -> pd.DataFrame:
    """The audit runs side by side: test metric at the selected epoch, the number the official script
    would print, and the coefficient's explosions from each trace."""
    rows = []
    for r in runs[runs["done"] & runs["label"].isin(VARIANT_NAMES)].itertuples():
        m = r.metrics
        select = m.get("selected_on", "val/acc").split("/", 1)[1]
        steps = Trace.load(f"{r.path}/trace.jsonl").steps()
        official = m.get("official") or {}
        ratio = (steps.filter(like="grad_norm_mod/").to_numpy() / steps.filter(like="grad_norm/").to_numpy())
        rows.append({"dataset": r.dataset, "variant": VARIANT_NAMES[r.label], "seed": r.seed,
                     f"test metric": f"{select} {m.get(select, math.nan):.4f}",
                     "official script would print": f"{official.get('metric', '')} {official.get('value', math.nan):.4f}",
                     "median scale applied": _sig(float(pd.Series(ratio.flatten()).median())) if ratio.size else math.nan}
                    | {k: _sig(v) for k, v in explosions(steps).items()} | {"stand-in": r.standin})
    return pd.DataFrame(rows)


def scaling_comparison(model, task, inputs: dict, target, coeff: float = 0.5, rho: float = 1.0) -> pd.DataFrame:
    """One backward pass, then the official name-matched scaling versus structural scaling
    (model.encoders[m]): how many parameters each selects and how many gradients it changes."""
    rows = []
    for selection in ("official: 'vision_encoder' / 'text_encoder' in name", "structural: model.encoders[m]"):
        model.zero_grad(set_to_none=True)
        task.loss(model(inputs).logits, target).backward()
        before = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        if selection.startswith("official"):
            matched = official_name_scaling(model, [coeff] * len(OFFICIAL_SUBSTRINGS), rho)
        else:
            matched = 0
            with torch.no_grad():
                for enc in model.encoders.values():
                    for p in enc.parameters():
                        if p.grad is not None:
                            p.grad.mul_(coeff * rho)
                            matched += 1
        changed = sum(not torch.equal(before[n], p.grad) for n, p in model.named_parameters() if n in before)
        rows.append({"selection": selection, "parameters matched": matched, "gradients changed": changed,
                     "parameters with a gradient": len(before)})
    model.zero_grad(set_to_none=True)
    return pd.DataFrame(rows)


def _sig(v, digits: int = 4):
    return float(f"{v:.{digits}g}") if isinstance(v, float) and math.isfinite(v) else v


def _max(series) -> float:
    series = pd.Series(series).dropna()
    return float(series.max()) if len(series) else math.nan


__all__ = ["DEVIATIONS", "FIX_NAMES", "OFFICIAL_SUBSTRINGS", "VARIANT_NAMES", "deviations", "explosions", "fixes",
           "name_matched",
           "official_name_scaling", "scaling_comparison", "variants"]
