"""Where Colab installs the companion from: the notebooks' "Open in Colab" badges and install cells.

One place defines the repository: `[project.urls] Repository` in pyproject.toml (unset here, since no
public repository exists; a fork sets it). `python -m cggmlib.repro.colab --write` rewrites every notebook's
badge and install cell from it; `--check` (and tests/test_colab.py) fails when they are out of sync.

The install cell (run only when `google.colab` is imported) installs from, in order:
1. `CGGM_INSTALL_FROM` (environment variable, or a notebook variable of that name): a clone or a
   wheel in Google Drive (a path), or a git URL;
2. the repository URL written into the cell from pyproject.toml;
3. otherwise it stops with a message saying how to set either (docs/colab.md).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import nbformat

from ..errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"
BADGE = "https://colab.research.google.com/assets/colab-badge.svg"
BADGE_LINE = re.compile(r"^\[!\[Open in Colab\]\(.*$", re.M)
INSTALL_MARKER = "# On Colab only: install the companion"

INSTALL_CELL = '''# On Colab only: install the companion (Colab keeps its own CUDA torch); elsewhere this does nothing.
# From: $CGGM_INSTALL_FROM (a clone or wheel in Drive, or a git URL), else _REPOSITORY (docs/colab.md).
# Its names start with _ so that cg.check_parameters does not take them for notebook parameters.
import os, pathlib, subprocess, sys
_REPOSITORY = {repository}  # written by `python -m cggmlib.repro.colab --write` from pyproject.toml
if "google.colab" in sys.modules:
    _source = os.environ.get("CGGM_INSTALL_FROM") or globals().get("CGGM_INSTALL_FROM") or _REPOSITORY
    if not _source:
        raise RuntimeError("Where should Colab install cggmlib from? Set CGGM_INSTALL_FROM to a wheel or clone in "
                           "Drive or a git URL (e.g. %env CGGM_INSTALL_FROM=/content/drive/MyDrive/cggmlib-0.1.0-py3-none-any.whl), "
                           "or set [project.urls] Repository in pyproject.toml and run python -m cggmlib.repro.colab --write")
    _url = _source if "://" in _source else pathlib.Path(os.path.abspath(os.path.expanduser(_source))).as_uri()
    _url = _url if _url.startswith(("git+", "file://")) or _url.endswith(".whl") else "git+" + _url
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", f"cggmlib[test] @ {{_url}}"], check=True)'''


def repository_url(pyproject: Path = ROOT / "pyproject.toml") -> str:
    """`[project.urls] Repository` of pyproject.toml, or "" when unset; a ConfigError for a non-https value."""
    if not pyproject.is_file():
        raise ConfigError(f"{pyproject} not found: run this from a clone of the repository")
    section = re.search(r"^\[project\.urls\]\n(.*?)(?=^\[|\Z)", pyproject.read_text(), re.M | re.S)
    found = re.search(r'^Repository\s*=\s*"([^"]*)"', section[1], re.M) if section else None
    url = found[1].rstrip("/") if found else ""
    if url and not re.fullmatch(r"https://[^\s/]+/[^\s]+", url):
        raise ConfigError(f"{pyproject}: [project.urls] Repository must be an https URL of the repository "
                          f"(e.g. https://github.com/<you>/<fork>), got {url!r}")
    return url.removesuffix(".git")


def badge(notebook: str, repository: str) -> str:
    """The markdown line of the "Open in Colab" badge of `notebook` (a file name in notebooks/)."""
    match = re.fullmatch(r"https://github\.com/([^/]+/[^/]+)", repository)
    if match:
        return f"[![Open in Colab]({BADGE})](https://colab.research.google.com/github/{match[1]}/blob/main/notebooks/{notebook})"
    return (f"[![Open in Colab]({BADGE})](https://colab.research.google.com/) "
            "(upload this notebook; docs/colab.md says how a fork links it directly)")


def install_cell(repository: str) -> str:
    return INSTALL_CELL.format(repository=json.dumps(repository))


def synced(path: Path, repository: str) -> nbformat.NotebookNode:
    """The notebook at `path` with its badge (first cell) and install cell generated from `repository`."""
    nb = nbformat.read(path, as_version=4)
    first, install = nb.cells[0], nb.cells[1]
    if not BADGE_LINE.search(first.source) or not install.source.startswith(INSTALL_MARKER):
        raise ConfigError(f"{path.name}: expected the 'Open in Colab' badge line in the first cell and the Colab "
                          f"install cell (starting {INSTALL_MARKER!r}) second")
    first.source = BADGE_LINE.sub(lambda _: badge(path.name, repository), first.source, count=1)
    install.source = install_cell(repository)
    return nb


def out_of_sync(folder: Path = NOTEBOOKS, repository: str | None = None) -> list[str]:
    """Names of the notebooks whose badge or install cell differs from the generated one."""
    repository = repository_url() if repository is None else repository
    stale = []
    for path in sorted(folder.glob("*.ipynb")):
        nb, now = synced(path, repository), nbformat.read(path, as_version=4)
        if [c.source for c in nb.cells[:2]] != [c.source for c in now.cells[:2]]:
            stale.append(path.name)
    return stale


def write(folder: Path = NOTEBOOKS, repository: str | None = None) -> list[str]:
    """Rewrite the badge and install cell of every notebook in `folder`; the names changed."""
    repository = repository_url() if repository is None else repository
    changed = out_of_sync(folder, repository)
    for name in changed:
        nbformat.write(synced(folder / name, repository), folder / name)
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cggmlib.repro.colab", description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="rewrite the notebooks' badges and install cells")
    parser.add_argument("--check", action="store_true", help="exit 1 when a notebook is out of sync")
    args = parser.parse_args(argv)
    url = repository_url()
    print(f"repository: {url or '(unset: set [project.urls] Repository in pyproject.toml)'}")
    if args.write:
        print("rewrote:", ", ".join(write(repository=url)) or "nothing (already in sync)")
        return 0
    stale = out_of_sync(repository=url)
    print("out of sync:", ", ".join(stale) or "none")
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
