"""Figure 4 of the CGGM paper: classifier gradients against unimodal gradients, and their t-SNE.

Guo et al., NeurIPS 2024, Sec. 3.3.2 and Fig. 4: the ideal "unimodal gradient" of
modality m feeds only h_m into the fusion module (the others replaced by zeros) and differentiates the
task loss with respect to the fused prediction head; CGGM argues that the gradient of the classifier
f_m's output layer points the same way, and uses it instead. One point per batch and modality:

    classifier gradient  g_cls[m] = ∇_{W_{f_m}} L(f_m(h_m), y)
    unimodal gradient    g_uni[m] = ∇_{W_F} L(Ω(0, …, h_m, …, 0), y)

Both are flattened output-layer gradients of the same shape (the classifiers' `out_layer` has the
fused layer's shape). The encoders are evaluated without gradient; dropout is off (eval mode).
"""
from __future__ import annotations

import io

import numpy as np
import torch

from ..models.base import fused_output_layer
from ..modulation.unimodal import keep_only
from ..files import atomic_write_bytes


def collect(model, strategy, data, batches: int = 32, split: str = "train") -> dict[str, np.ndarray]:
    """{"grads" (N, D) float32, "modality", "source" (classifier | unimodal), "batch"} over `batches` batches."""
    if getattr(strategy, "classifiers", None) is None:
        raise ValueError("gradient collection needs the CGGM classifiers f_m: use cggm or joint with observe=True")
    fused = fused_output_layer(model)
    heads = strategy.classifiers.heads
    device = next(model.parameters()).device
    task = data.task
    was = model.training, heads.training
    model.eval()
    heads.eval()
    grads, modality, source, batch_ids = [], [], [], []
    try:
        for b, batch in enumerate(getattr(data, split)):
            if b >= batches:
                break
            batch = batch.to(device)
            with torch.no_grad():
                features = {m: f.float() for m, f in model(batch.inputs).features.items()}
            for m, h in features.items():
                head_w = heads[m].out_layer.weight
                g_cls, = torch.autograd.grad(task.loss(heads[m](h), batch.target), head_w)
                g_uni, = torch.autograd.grad(task.loss(model.fuse(keep_only(features, m)), batch.target), fused.weight)
                for g, src in ((g_cls, "classifier"), (g_uni, "unimodal")):
                    grads.append(g.detach().flatten().float().cpu().numpy())
                    modality.append(m)
                    source.append(src)
                    batch_ids.append(b)
    finally:
        model.train(was[0])
        heads.train(was[1])
    return {"grads": np.stack(grads).astype(np.float32), "modality": np.array(modality), "source": np.array(source),
            "batch": np.array(batch_ids)}


def save(collected: dict, path) -> None:
    buf = io.BytesIO()
    np.savez_compressed(buf, **collected)
    atomic_write_bytes(path, buf.getvalue())


def load(path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def cosines(collected: dict) -> "pd.DataFrame":
    """cos(g_cls[m], g_uni[m]) per batch and modality: how well the classifier stands in for the unimodal gradient."""
    import pandas as pd

    g = collected["grads"] / (np.linalg.norm(collected["grads"], axis=1, keepdims=True) + 1e-12)
    rows = []
    for m in np.unique(collected["modality"]):
        for b in np.unique(collected["batch"]):
            sel = (collected["modality"] == m) & (collected["batch"] == b)
            cls = g[sel & (collected["source"] == "classifier")]
            uni = g[sel & (collected["source"] == "unimodal")]
            if len(cls) and len(uni):
                rows.append({"modality": str(m), "batch": int(b), "cos": float(cls[0] @ uni[0])})
    return pd.DataFrame(rows, columns=["modality", "batch", "cos"])


def embed(collected: dict, perplexity: float = 30.0, seed: int = 0) -> "pd.DataFrame":
    """Joint 2-D t-SNE (scikit-learn) of the unit-normalised gradients: columns x, y, modality, source, batch.

    Gradients are normalised to unit length first: Fig. 4 is about directions, and the classifier and
    fused-head gradients differ in scale by orders of magnitude.
    """
    import pandas as pd
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    g = collected["grads"].astype(np.float64)
    g = g / (np.linalg.norm(g, axis=1, keepdims=True) + 1e-12)
    n = len(g)
    # a few hundred points: the exact method is fast and deterministic; OpenMP threads follow torch's
    # setting (Barnes-Hut with all cores of a busy machine was measured 200x slower)
    with threadpool_limits(limits=torch.get_num_threads()):
        xy = TSNE(n_components=2, perplexity=min(perplexity, max(1.0, (n - 1) / 3)), init="pca", random_state=seed,
                  method="exact" if n <= 1000 else "barnes_hut").fit_transform(g) if n > 2 else np.zeros((n, 2))
    return pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1], "modality": collected["modality"].astype(str),
                         "source": collected["source"].astype(str), "batch": collected["batch"]})


__all__ = ["collect", "cosines", "embed", "load", "save"]
