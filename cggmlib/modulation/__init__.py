"""Strategies for the one training loop: joint training, CGGM and the baselines, by registry name."""
from __future__ import annotations

import dataclasses

from ..errors import ConfigError
from .base import Strategy
from .cggm import CGGM

#: registry name -> Strategy class
STRATEGIES: dict[str, type[Strategy]] = {
    "joint": Strategy,
    "cggm": CGGM,
}


def make_strategy(name: str, **kwargs) -> Strategy:
    """Build a strategy from its registry name, e.g. make_strategy("cggm", rho=1.3, lam=0.2)."""
    if name not in STRATEGIES:
        raise ConfigError(f"unknown strategy {name!r}; choose from {sorted(STRATEGIES)}")
    cls = STRATEGIES[name]
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise ConfigError(f"strategy {name!r} has no option(s) {unknown}; its options are {sorted(known)}")
    return cls(**kwargs)


def strategy_defaults(name: str, dataset: str, preset: str) -> dict:
    """The dataset preset's values for the options this strategy has (e.g. ρ, λ, classifier lr)."""
    from ..presets import cggm_kwargs

    known = {f.name for f in dataclasses.fields(STRATEGIES[name])}
    return {k: v for k, v in cggm_kwargs(dataset, preset).items() if k in known}


__all__ = ["CGGM", "STRATEGIES", "Strategy", "make_strategy", "strategy_defaults"]
