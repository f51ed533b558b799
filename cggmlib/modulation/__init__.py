"""Strategies for the one training loop: joint training, CGGM and the baselines, by registry name.

Each method lives in its own module; the registry names "module:Class" and imports on first use.
"""
from __future__ import annotations

import dataclasses
import importlib

from ..errors import ConfigError
from .base import Strategy
from .cggm import CGGM

#: registry name -> "module:Class" inside cggmlib.modulation
STRATEGIES: dict[str, str] = {
    "joint": "base:Strategy",
    "cggm": "cggm:CGGM",
    "unimodal": "unimodal:Unimodal",
    "mrd": "mrd:MRD",
    "mslr": "mslr:MSLR",
    "gblending": "gblending:GBlending",
    "greedy": "greedy:Greedy",
    "ogm": "ogm:OGM",
    "ogm_ge": "ogm:OGMGE",
    "agm": "agm:AGM",
    "pmr": "pmr:PMR",
    "umt": "umt:UMT",
    "ume": "ume:UME",
    "qmf": "qmf:QMF",
    "reconboost": "reconboost:ReconBoost",
    "mmpareto": "mmpareto:MMPareto",
}


def strategy_class(name: str) -> type[Strategy]:
    """The Strategy class registered as `name`."""
    if name not in STRATEGIES:
        raise ConfigError(f"unknown strategy {name!r}; choose from {sorted(STRATEGIES)}")
    module, cls = STRATEGIES[name].split(":")
    return getattr(importlib.import_module(f".{module}", __name__), cls)


def make_strategy(name: str, **kwargs) -> Strategy:
    """Build a strategy from its registry name, e.g. make_strategy("cggm", rho=1.3, lam=0.2)."""
    cls = strategy_class(name)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise ConfigError(f"strategy {name!r} has no option(s) {unknown}; its options are {sorted(known)}")
    return cls(**kwargs)


def strategy_defaults(name: str, dataset: str, preset: str) -> dict:
    """The dataset preset's values for the options this strategy has (e.g. ρ, λ, classifier lr)."""
    from ..presets import cggm_kwargs

    known = {f.name for f in dataclasses.fields(strategy_class(name))}
    defaults = cggm_kwargs(dataset, preset)
    defaults["teacher_preset"] = preset  # UMT/UME teachers train with the run's own preset
    return {k: v for k, v in defaults.items() if k in known}


__all__ = ["CGGM", "STRATEGIES", "Strategy", "make_strategy", "strategy_class", "strategy_defaults"]
