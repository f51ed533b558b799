"""environment.yml, pyproject.toml and requirements.lock agree: same packages, same exact pins."""
import re
import tomllib

import yaml
from packaging.requirements import Requirement

from conftest import ROOT


def lock_pins():
    return {Requirement(line).name.lower(): str(Requirement(line).specifier).removeprefix("==")
            for line in (ROOT / "requirements.lock").read_text().splitlines() if "==" in line}


def env_pins():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert "-e ." in pip, "environment.yml must install the project itself with `-e .`"
    return {Requirement(x).name.lower(): Requirement(x) for x in pip if not x.startswith("-")}


def project_requirements():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    return {Requirement(r).name.lower(): Requirement(r) for r in reqs}


def test_environment_lists_every_project_dependency_with_the_lock_pin():
    env, lock = env_pins(), lock_pins()
    for name, req in project_requirements().items():
        assert name in env, f"{name} is in pyproject.toml but not in environment.yml"
        pin = str(env[name].specifier)
        assert pin.startswith("=="), f"environment.yml must pin {name} exactly, found {pin!r}"
        version = pin[2:]
        assert lock.get(name) == version, f"{name}: environment.yml pins {version}, requirements.lock {lock.get(name)}"
        assert req.specifier.contains(version), f"{name}=={version} is outside pyproject's range {req.specifier}"


def test_environment_has_nothing_pyproject_lacks():
    extra = set(env_pins()) - set(project_requirements())
    assert not extra, f"environment.yml lists packages pyproject.toml does not: {sorted(extra)}"


def test_torch_pin_is_the_local_cpu_wheel_version():
    assert lock_pins()["torch"] == "2.13.0"
    assert re.search(r"^torch==2\.13\.0$", (ROOT / "requirements.lock").read_text(), re.M)
