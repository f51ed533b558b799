"""Models: `build_model(name, data, preset)` returns the model a dataset uses, sized by a preset."""
from __future__ import annotations

from torch import nn

from ..errors import ConfigError
from .base import MultimodalModel, Output, check_encoders, fused_output_layer
from .mlp import LateFusionMLP


def _mlp(data, **kwargs) -> nn.Module:
    return LateFusionMLP(data.input_dims, data.num_outputs, **kwargs)


#: dataset name -> builder(data, **model_kwargs); presets live in cggmlib.presets
MODELS = {
    "synthetic": _mlp,
    "mfeat": _mlp,
}


def build_model(name: str, data, preset: str = "smoke", **overrides) -> nn.Module:
    """The model for dataset `name`, with the `preset` hyperparameters ("smoke" or "paper") and overrides."""
    from ..presets import model_kwargs

    if name not in MODELS:
        raise ConfigError(f"no model for dataset {name!r}; choose from {sorted(MODELS)}")
    return MODELS[name](data, **(model_kwargs(name, preset) | overrides))


__all__ = ["MODELS", "LateFusionMLP", "MultimodalModel", "Output", "build_model", "check_encoders",
           "fused_output_layer"]
