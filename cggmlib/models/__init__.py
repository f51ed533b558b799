"""Models: `build_model(name, data, preset)` returns the model a dataset uses, sized by a preset."""
from __future__ import annotations

from torch import nn

from ..errors import ConfigError
from .base import MultimodalModel, Output, check_encoders, fused_output_layer
from .food import FOOD_ORDER, FoodModel
from .fusion import FUSIONS, FusionModel, mlp_encoders
from .mlp import LateFusionMLP
from .msa import MSA_ORDER, MSAModel, ordered


def _mlp(data, **kwargs) -> nn.Module:
    return LateFusionMLP(data.input_dims, data.num_outputs, **kwargs)


def _msa(data, **kwargs) -> nn.Module:
    return MSAModel(ordered(data.input_dims, MSA_ORDER), data.num_outputs, **kwargs)


def _food(data, **kwargs) -> nn.Module:
    return FoodModel(ordered(data.input_dims, FOOD_ORDER), data.num_outputs, **kwargs)


def _brats(data, arch: str = "unet", deeplab: dict | None = None, unet: dict | None = None) -> nn.Module:
    """See cggmlib.models.seg.build_brats; its options are declared here so checking them imports no MONAI."""
    from .seg import build_brats  # MONAI is imported only when a BraTS model is built

    return build_brats(data, arch=arch, deeplab=deeplab, unet=unet)


def __getattr__(name: str):
    if name == "DeepLabMultiInput":
        from .seg import DeepLabMultiInput

        return DeepLabMultiInput
    if name == "MultiEncoderUNet":
        from .unet import MultiEncoderUNet

        return MultiEncoderUNet
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


#: dataset name -> builder(data, **model_kwargs); presets live in cggmlib.presets
MODELS = {
    "synthetic": _mlp,
    "mfeat": _mlp,
    "mosi": _msa,
    "iemocap": _msa,
    "food101": _food,
    "brats2021": _brats,
}


#: dataset name -> the callable whose keyword parameters are its model options (`model_kwargs`)
MODEL_OPTIONS = {"synthetic": LateFusionMLP, "mfeat": LateFusionMLP, "mosi": MSAModel, "iemocap": MSAModel,
                 "food101": FoodModel, "brats2021": _brats}


def model_options(name: str) -> dict:
    """The typed options of dataset `name`'s model (cggmlib/options.py), e.g. hidden, dropout."""
    from ..options import signature_options

    if name not in MODEL_OPTIONS:
        raise ConfigError(f"no model for dataset {name!r}; choose from {sorted(MODEL_OPTIONS)}")
    return signature_options(MODEL_OPTIONS[name], skip=("data", "input_dims", "num_outputs"))


def build_model(name: str, data, preset: str = "smoke", **overrides) -> nn.Module:
    """The model for dataset `name`, with the `preset` hyperparameters ("smoke" or "paper") and overrides."""
    from ..presets import model_kwargs

    if name not in MODELS:
        raise ConfigError(f"no model for dataset {name!r}; choose from {sorted(MODELS)}")
    return MODELS[name](data, **(model_kwargs(name, preset) | overrides))


__all__ = ["FUSIONS", "MODELS", "MODEL_OPTIONS", "model_options", "DeepLabMultiInput", "FoodModel", "FusionModel",
           "LateFusionMLP", "MSAModel", "MultiEncoderUNet", "MultimodalModel", "Output", "build_model", "check_encoders",
           "fused_output_layer", "mlp_encoders"]
