"""CGGM's UPMC-Food101 model (`FoodModel`) over cached frozen ViT and BERT token features.

Guo et al., NeurIPS 2024, Sec. 4.2 and Table 7. Reference code: zrguo/CGGM:models/foodmodel.py
(`FoodModel`) with the classifiers of models/msamodel.py.

The same design as `MSAModel` (cggmlib/models/msa.py): per modality a Conv1d(768 → 40, k=1) and a
4-layer MulT encoder; the sequences concatenated as [image, text] (position 0 is the ViT CLS token);
a 2-layer fusion encoder; the residual MLP and `out_layer` Linear(40, 101). Dropouts (Table 7 as in
run/food_run.py): attention .2, ReLU .15, embedding .2, residual .15, output .1.

Deviations from the official code (each on purpose):
- The text tokens get their own projection (`encoders["text"].proj`); the official forward passes
  them through the image projection `projv` and leaves `projt` unused (reference §2.3).
- Both projections sit inside their modality's encoder, so CGGM rescales them with the rest of the
  encoder; the official `projv` sat outside both encoders and was never rescaled (reference §2.1 D8).
- The ViT/BERT features are computed once and cached by the loader instead of recomputed every
  batch; they are frozen in the official code too, so this changes cost, not the model.
"""
from __future__ import annotations

from .msa import TokenFusionTransformer

#: concatenation order of the official FoodModel: [vision, text]
FOOD_ORDER = ("image", "text")


class FoodModel(TokenFusionTransformer):
    """Image and text token encoders, [image, text] fusion transformer, CLS position, 101-way out_layer."""

    def __init__(self, input_dims: dict, num_outputs: int = 101, dim: int = 40, heads: int = 5, layers: int = 4,
                 fusion_layers: int = 2, classifier_layers: int = 2, attn_dropout: float = 0.2,
                 relu_dropout: float = 0.15, embed_dropout: float = 0.2, res_dropout: float = 0.15,
                 out_dropout: float = 0.1, mask_padding: bool = False):
        super().__init__(input_dims, num_outputs, dim=dim, heads=heads, layers=layers, fusion_layers=fusion_layers,
                         classifier_layers=classifier_layers, attn_dropout=attn_dropout, relu_dropout=relu_dropout,
                         embed_dropout=embed_dropout, res_dropout=res_dropout, out_dropout=out_dropout,
                         mask_padding=mask_padding)
