"""CGGM's UPMC-Food101 model (`FoodModel`) over cached frozen ViT and BERT token features.

Guo et al., NeurIPS 2024, Sec. 4.2 and Table 7. Reference code: zrguo/CGGM@21e428c models/foodmodel.py
(`FoodModel`) with the classifiers of models/msamodel.py.

The same design as `MSAModel` (cggmlib/models/msa.py): per modality a Conv1d(768 → 40, k=1) and a
4-layer MulT encoder; the sequences concatenated as [image, text] (position 0 is the ViT CLS token);
a 2-layer fusion encoder; the residual MLP and `out_layer` Linear(40, 101). Dropouts (Table 7 as in
run/food_run.py): attention .2, ReLU .15, embedding .2, residual .15, output .1.

Where the released code is followed, and the corrections offered beside it:
- `text_projection="image"` (default, as released): the text tokens go through the image projection,
  as zrguo/CGGM@21e428c models/foodmodel.py:50 passes `t` through `self.projv` and leaves `projt`
  unused. `encoders["text"].proj` is then the very module `encoders["image"].proj`: one shared
  projection, which no CGGM coefficient rescales (it belongs to no single modality).
  `text_projection="own"` (our correction) gives the text its own projection.
- The released CGGM step rescales `vision_encoder` and `text_encoder` only (src/foodtrain.py:125–129),
  i.e. `encoders[m].encoder` here (`released_scaled_parameters`), never a projection.
- The ViT/BERT features are computed once and cached by the loader instead of recomputed every
  batch; they are frozen in the official code too, so this changes cost, not the model.
"""
from __future__ import annotations

from ..errors import ConfigError
from .msa import TokenFusionTransformer

#: concatenation order of the official FoodModel: [vision, text]
FOOD_ORDER = ("image", "text")


class FoodModel(TokenFusionTransformer):
    """Image and text token encoders, [image, text] fusion transformer, CLS position, 101-way out_layer."""

    def __init__(self, input_dims: dict, num_outputs: int = 101, dim: int = 40, heads: int = 5, layers: int = 4,
                 fusion_layers: int = 2, classifier_layers: int = 2, attn_dropout: float = 0.2,
                 relu_dropout: float = 0.15, embed_dropout: float = 0.2, res_dropout: float = 0.15,
                 out_dropout: float = 0.1, mask_padding: bool = False, text_projection: str = "image"):
        super().__init__(input_dims, num_outputs, dim=dim, heads=heads, layers=layers, fusion_layers=fusion_layers,
                         classifier_layers=classifier_layers, attn_dropout=attn_dropout, relu_dropout=relu_dropout,
                         embed_dropout=embed_dropout, res_dropout=res_dropout, out_dropout=out_dropout,
                         mask_padding=mask_padding)
        if text_projection not in TEXT_PROJECTIONS:
            raise ConfigError(f"FoodModel: text_projection must be one of {TEXT_PROJECTIONS}, got {text_projection!r}")
        self.text_projection = text_projection
        if text_projection == "image" and {"image", "text"} <= set(self.encoders):
            image, text = self.encoders["image"].proj, self.encoders["text"].proj
            if image.in_channels != text.in_channels:
                raise ConfigError(
                    f"FoodModel: text_projection='image' (the released model) feeds the text tokens through the "
                    f"image projection, which needs equal feature sizes; got image {image.in_channels}, text "
                    f"{text.in_channels}. Pass model option text_projection=own (--model-opt text_projection=own)")
            self.encoders["text"].proj = image


#: which projection the text tokens use: the image one (released) or their own (our correction)
TEXT_PROJECTIONS = ("image", "own")
