"""Typed options: every strategy field, dataset option, model option and notebook parameter is checked
against the type it declares (a dataclass field type, a signature annotation, or its default's type).

The same rules hold on the command line, in `cg.Config` and in papermill parameters:
- bool: True/False, or the words true/false, yes/no, on/off, 1/0 (any case); anything else is an error;
- int: an integer (not a bool), or text spelling one; float: a number, or text spelling one;
- str: text; dict, list, tuple: that container, or text spelling one as a Python literal;
- `X | None`: also None, or the text none/null;
- an unknown name is an error that suggests the closest declared name.
Numbers among dataset and model options must not be negative, and an int whose default is ≥ 1 (a
size or a count, e.g. `hidden`, `num_samples`) must be ≥ 1; a number of layers may be 0.
"""
from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import os

from .data import DATASETS
from .errors import ConfigError

TRUE_WORDS = ("true", "yes", "on", "1")
FALSE_WORDS = ("false", "no", "off", "0")
_BASE = {"bool": bool, "int": int, "float": float, "str": str, "dict": dict, "list": list, "tuple": tuple,
         "None": type(None)}
#: names IPython puts into a notebook's namespace: never papermill parameters
_KERNEL_NAMES = {"In", "Out", "get_ipython", "exit", "quit", "open"}


@dataclasses.dataclass(frozen=True)
class Option:
    """One declared option: its accepted types (empty: any value) and its default."""

    name: str
    kinds: tuple = ()
    default: object = None

    def describe(self) -> str:
        return " | ".join("None" if k is type(None) else k.__name__ for k in self.kinds) or "any value"


def kinds_of(annotation, default=inspect.Parameter.empty) -> tuple:
    """The base types an annotation allows ('int | None' -> (int, NoneType)); unknown types allow anything."""
    if annotation is inspect.Parameter.empty or annotation is None:
        if default is inspect.Parameter.empty or default is None:
            return ()
        return (type(default),) if type(default) in _BASE.values() else ()
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    if not isinstance(annotation, str) and " | " in str(annotation):
        text = str(annotation)
    kinds = []
    for part in text.replace("typing.", "").split("|"):
        base = _BASE.get(part.strip().split("[", 1)[0])
        if base is None:
            return ()  # e.g. nn.Module: not checked here
        kinds.append(base)
    return tuple(kinds)


def dataclass_options(cls) -> dict[str, Option]:
    """The fields of a dataclass (a Strategy) as options."""
    out = {}
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else None
        out[f.name] = Option(f.name, kinds_of(f.type, default), default)
    return out


def signature_options(func, skip=()) -> dict[str, Option]:
    """The keyword parameters of a function (a data loader, a model's __init__) as options."""
    out = {}
    for name, p in inspect.signature(func).parameters.items():
        if name in skip or name == "self" or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL) or p.default is p.empty:
            continue
        out[name] = Option(name, kinds_of(p.annotation, p.default), p.default)
    return out


def parse_bool(value, name: str, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in TRUE_WORDS + FALSE_WORDS:
        return value.strip().lower() in TRUE_WORDS
    raise ConfigError(f"{where} {name!r} must be a bool (true/false, yes/no, on/off, 1/0), got {value!r}")


def _literal(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def coerce(value, option: Option, where: str):
    """`value` as the type `option` declares; text (command line, papermill) is parsed. Raises ConfigError."""
    kinds = option.kinds
    if not kinds:
        return _literal(value) if isinstance(value, str) else value
    if isinstance(value, str) and value.strip().lower() in ("none", "null") and type(None) in kinds:
        return None
    if value is None:
        if type(None) in kinds:
            return None
        raise ConfigError(f"{where} {option.name!r} must be {option.describe()}, got None")
    if bool in kinds:
        return parse_bool(value, option.name, where)
    if str in kinds and isinstance(value, os.PathLike):
        return os.fspath(value)  # a folder given as a Path
    if isinstance(value, str) and str not in kinds:
        value = _literal(value.strip())
    for kind in kinds:
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return value
        if kind in (list, tuple) and isinstance(value, (list, tuple)):
            return value
        if kind in (str, dict) and isinstance(value, kind):
            return value
    raise ConfigError(f"{where} {option.name!r} must be {option.describe()}, got {value!r}")


def unknown_message(name: str, declared, where: str) -> str:
    close = difflib.get_close_matches(name, list(declared), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown {where} {name!r}{hint} (known: {sorted(declared)})"


def check_options(given: dict, declared: dict[str, Option], where: str, sizes: bool = False) -> dict:
    """`given` with every value coerced to its declared type; unknown names raise ConfigError.

    `sizes`: also refuse negative numbers, and values < 1 where the default is an int ≥ 1.
    """
    out = {}
    for name, value in given.items():
        if name not in declared:
            raise ConfigError(unknown_message(name, declared, where))
        option = declared[name]
        out[name] = value = coerce(value, option, where)
        if sizes and isinstance(value, (int, float)) and not isinstance(value, bool):
            floor = 1 if isinstance(option.default, int) and not isinstance(option.default, bool) \
                and option.default >= 1 and not name.endswith("layers") else 0  # 0 layers: an ablation
            if value < floor:
                raise ConfigError(f"{where} {name!r} must be >= {floor}, got {value!r}")
    return out


def check_parameters(namespace: dict) -> None:
    """Check a notebook's papermill parameters; call it in the cell after the parameters cell.

    The parameters cell declares each parameter with a type annotation (`epochs: int = 20`), which
    puts it into the notebook's `__annotations__`; papermill's injected cell assigns plain names. So
    an injected name without a declaration is an unknown parameter (a typo), and a declared one is
    coerced in place (`-p guard false` arrives as the text "false" and becomes False).
    """
    declared = {k: Option(k, kinds_of(t)) for k, t in namespace.get("__annotations__", {}).items()}
    if not declared:
        raise ConfigError("check_parameters found no declared parameters: the parameters cell must annotate "
                          "each one, e.g. `epochs: int = 20`")
    literal = (bool, int, float, str, list, dict, tuple, type(None))
    for name, value in list(namespace.items()):
        if name.startswith("_") or name in _KERNEL_NAMES or name in declared or not isinstance(value, literal):
            continue
        raise ConfigError(unknown_message(name, declared, "notebook parameter") +
                          "; check the -p names given to papermill")
    for name, option in declared.items():
        if name in namespace:
            namespace[name] = coerce(namespace[name], option, "notebook parameter")


def data_options(dataset: str) -> dict[str, Option]:
    """The options of dataset `dataset`'s loader (its keyword parameters but batch_size and seed)."""
    import importlib

    load = importlib.import_module(f"cggmlib.data.{DATASETS[dataset]}").load
    return signature_options(load, skip=("root", "path", "batch_size", "seed"))
