"""Map the released models' state dicts (zrguo/CGGM@21e428c) onto cggmlib's parameter names.

Released MulT encoder (modules/transformer.py): `layers.k.self_attn.*`, `layers.k.layer_norms.{0,1}`,
`layer_norm`; ours (cggmlib/models/msa.py): `layers.k.attn.*`, `layers.k.norm{1,2}`, `norm`. Released
MSAModel (models/msamodel.py): `proj.i`, `encoders.i`; ours `encoders.<m>.proj`, `encoders.<m>.encoder`.
Released FoodModel (models/foodmodel.py): `projv`, `vision_encoder`, `text_encoder` (`projt` unused);
ours `encoders.image.proj` (shared with text), `encoders.{image,text}.encoder`. Released classifiers
(models/msamodel.py `ClassifierGuided`): `classifers.i.bone`, `.proj1`, `.out_layer`.
"""
from __future__ import annotations

import re

import torch

_INNER = [(r"\.self_attn\.", ".attn."), (r"\.layer_norms\.0\.", ".norm1."), (r"\.layer_norms\.1\.", ".norm2."),
          (r"(^|\.)layer_norm\.", r"\1norm.")]
_SKIP = re.compile(r"(^|\.)(version|embed_positions\._float_tensor)$|^projt\.")


def _inner(name: str) -> str:
    for pattern, repl in _INNER:
        name = re.sub(pattern, repl, name)
    return name


def model_state(released: dict, modalities: list[str]) -> dict:
    """Released MSAModel / FoodModel state dict → cggmlib `TokenFusionTransformer` state dict."""
    out = {}
    for name, value in released.items():
        if _SKIP.search(name):
            continue
        name = re.sub(r"^proj\.(\d+)\.", lambda g: f"encoders.{modalities[int(g[1])]}.proj.", name)
        name = re.sub(r"^encoders\.(\d+)\.", lambda g: f"encoders.{modalities[int(g[1])]}.encoder.", name)
        name = re.sub(r"^vision_encoder\.", "encoders.image.encoder.", name)
        name = re.sub(r"^text_encoder\.", "encoders.text.encoder.", name)
        if name.startswith("projv."):  # one projection, shared by image and text (text_projection="image")
            for m in ("image", "text"):
                out[name.replace("projv.", f"encoders.{m}.proj.")] = value
            continue
        out[_inner(name)] = value
    return out


def classifier_states(released: dict, modalities: list[str]) -> dict[str, dict]:
    """Released `ClassifierGuided` state dict → {modality: state dict of our `SequenceClassifier`}."""
    out: dict[str, dict] = {m: {} for m in modalities}
    for name, value in released.items():
        if _SKIP.search(name):
            continue
        i, rest = re.match(r"^classifers\.(\d+)\.(.*)$", name).groups()
        out[modalities[int(i)]][_inner(rest.replace("bone.", "encoder.", 1))] = value
    return out


def max_difference(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor],
                   skip_key_bias: bool = False) -> tuple[float, str]:
    """(largest |a − b| over the shared names, the name where it occurs).

    skip_key_bias: leave out the key third of each attention `in_proj_bias`. Its true gradient is
    zero (softmax ignores a constant added to every key score), so Adam turns rounding noise there
    into steps of ±lr: a difference that says nothing about the method."""
    worst, where = 0.0, ""
    for name, a in ours.items():
        if name in theirs and a.is_floating_point():
            b = theirs[name]
            if skip_key_bias and name.endswith("in_proj_bias"):
                d = a.numel() // 3
                a, b = torch.cat([a[:d], a[2 * d:]]), torch.cat([b[:d], b[2 * d:]])
            diff = float((a.double() - b.double()).abs().max())
            if diff > worst:
                worst, where = diff, name
    return worst, where
