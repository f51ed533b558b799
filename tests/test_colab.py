"""Colab: badges and install cells are generated from pyproject.toml, no link points to the
non-existent cggm-companion repository, and the install cell's Colab branch really installs cggmlib
(run with a `google.colab` module injected into sys.modules, from a wheel built from this checkout)."""
import json
import os
import re
import shutil
import subprocess
import sys

import nbformat
import pytest

from conftest import ROOT
from cggmlib.repro import colab

FAKE_REPOSITORY = re.compile(r"cggm-companion/cggm-companion|github\.com/cggm-companion")


def test_notebooks_badges_and_install_cells_are_generated_from_pyproject():
    assert colab.out_of_sync() == [], "run `python -m cggmlib.repro.colab --write`"
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        assert nb.cells[1].source == colab.install_cell(colab.repository_url())


def test_no_link_points_to_the_nonexistent_repository():
    files = [*(ROOT / "notebooks").glob("*.ipynb"), *(ROOT / "docs").glob("*.md"), ROOT / "pyproject.toml",
             *(ROOT / "cggmlib").rglob("*.py"), *(ROOT / "data_cards").glob("*.md")]
    assert len(files) > 20
    offenders = [str(f.relative_to(ROOT)) for f in files if FAKE_REPOSITORY.search(f.read_text())]
    assert offenders == []


#: GitHub repositories the project links to, each checked by hand to exist (add a new link's repository here)
KNOWN_REPOSITORIES = {"zrguo/CGGM", "facebookincubator/submitit"}


def test_every_github_link_points_to_a_known_existing_repository():
    files = [*(ROOT / "notebooks").glob("*.ipynb"), *(ROOT / "docs").glob("*.md"), ROOT / "pyproject.toml",
             ROOT / "README.md", *(ROOT / "cggmlib").rglob("*.py"), *(ROOT / "data_cards").glob("*.md")]
    linked = {(f.relative_to(ROOT).as_posix(), m[1].removesuffix(".git")) for f in files
              for m in re.finditer(r"github\.com/([\w.-]+/[\w-]+(?:\.[\w-]+)*)", f.read_text())}
    assert {repo for _, repo in linked} >= {"zrguo/CGGM"}
    assert sorted((f, repo) for f, repo in linked if repo not in KNOWN_REPOSITORIES) == []


def test_a_fork_sets_the_repository_once_and_badges_and_cells_follow(tmp_path):
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text((ROOT / "pyproject.toml").read_text().replace(
        '[project.urls]\n', '[project.urls]\nRepository = "https://github.com/me/cggm-fork"\n'))
    url = colab.repository_url(pyproject)
    assert url == "https://github.com/me/cggm-fork"
    folder = tmp_path / "notebooks"
    shutil.copytree(ROOT / "notebooks", folder)
    assert len(colab.write(folder, url)) == len(list(folder.glob("*.ipynb")))
    nb = nbformat.read(folder / "00_quickstart.ipynb", as_version=4)
    assert "colab.research.google.com/github/me/cggm-fork/blob/main/notebooks/00_quickstart.ipynb" in nb.cells[0].source
    assert '_REPOSITORY = "https://github.com/me/cggm-fork"' in nb.cells[1].source
    assert colab.out_of_sync(folder, url) == []
    pyproject.write_text(pyproject.read_text().replace("https://github.com/me/cggm-fork", "github.com/me"))
    with pytest.raises(colab.ConfigError, match=r"Repository must be an https URL"):
        colab.repository_url(pyproject)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """cggmlib's wheel, built once from a copy of this checkout (offline: no build isolation)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    shutil.copytree(ROOT / "cggmlib", src / "cggmlib", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp / "dist"), str(src)], check=True, timeout=300)
    return src, next((tmp / "dist").glob("cggmlib-*.whl"))


def run_install_cell(tmp_path, repository: str = "", env: dict | None = None, prelude: str = ""):
    """The install cell, run as Colab would (google.colab imported), pip installing into tmp_path/target."""
    code = ("import sys, types\nsys.modules['google'] = types.ModuleType('google')\n"
            "sys.modules['google.colab'] = types.ModuleType('google.colab')\n" + prelude + colab.install_cell(repository))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CGGM_INSTALL_FROM")} | {
        "PIP_TARGET": str(tmp_path / "target"), "PIP_NO_DEPS": "1", "PIP_NO_INDEX": "1",
        "PIP_NO_BUILD_ISOLATION": "0"} | (env or {})
    tmp_path.mkdir(parents=True, exist_ok=True)
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)


def installed_from(target):
    """Where `import cggmlib` resolves with only the target folder added to the path."""
    out = subprocess.run([sys.executable, "-c", "import cggmlib, cggmlib.modulation.classifiers as c; "
                          "print(cggmlib.__file__, hasattr(c, 'DefaultClassifier'))"],
                         env={**os.environ, "PYTHONPATH": str(target)}, cwd=target, capture_output=True, text=True,
                         timeout=120)
    return out.stdout.split()


@pytest.mark.slow
def test_colab_branch_installs_from_a_wheel_in_drive(tmp_path, wheel):
    _, whl = wheel
    drive = tmp_path / "drive" / "Colab Notebooks"  # Drive's default folder: a space in the path
    drive.mkdir(parents=True)
    shutil.copy(whl, drive / whl.name)  # what a user copies to MyDrive
    done = run_install_cell(tmp_path, env={"CGGM_INSTALL_FROM": str(drive / whl.name)})
    assert done.returncode == 0, done.stderr
    where, has_default = installed_from(tmp_path / "target")
    assert where.startswith(str(tmp_path / "target")) and has_default == "True"


@pytest.mark.slow
def test_colab_branch_installs_from_a_clone_or_the_forks_git_url(tmp_path, wheel):
    src, _ = wheel
    done = run_install_cell(tmp_path / "a", prelude=f"CGGM_INSTALL_FROM = {json.dumps(str(src))}\n")  # a Drive clone
    assert done.returncode == 0, done.stderr
    assert installed_from(tmp_path / "a" / "target")[0].startswith(str(tmp_path / "a" / "target"))
    repo = tmp_path / "repo"
    shutil.copytree(src, repo, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    for args in (["init", "-q"], ["add", "."], ["commit", "-qm", "fork"]):
        subprocess.run([*git, *args], check=True, capture_output=True)
    done = run_install_cell(tmp_path / "b", repository=f"git+file://{repo}")  # REPOSITORY, no variable set
    assert done.returncode == 0, done.stderr
    assert installed_from(tmp_path / "b" / "target")[0].startswith(str(tmp_path / "b" / "target"))


def test_colab_branch_without_a_source_says_how_to_set_one(tmp_path):
    done = run_install_cell(tmp_path)
    assert done.returncode != 0
    assert "CGGM_INSTALL_FROM" in done.stderr and "[project.urls] Repository" in done.stderr
    assert not (tmp_path / "target").exists()


def test_install_cell_does_nothing_outside_colab(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PIP_TARGET": str(tmp_path / "t")}
    done = subprocess.run([sys.executable, "-c", colab.install_cell("")], env=env, cwd=tmp_path, capture_output=True,
                          text=True)
    assert done.returncode == 0 and not (tmp_path / "t").exists()
