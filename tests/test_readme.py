"""The README's code works: the bring-your-own examples run as written, and the commands it names exist."""
import re
import subprocess
import sys

import torch

from conftest import ROOT

README = (ROOT / "README.md").read_text()


def readme_blocks() -> list[str]:
    """Python blocks from the one marked `<!-- tested ... -->` up to the end of that section."""
    start = README.index("<!-- tested")
    section = README[start:README.index("\n## ", start)]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_bring_your_own_examples_run():
    blocks = readme_blocks()
    assert len(blocks) == 2
    torch.manual_seed(0)
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)
    result = namespace["result"]
    assert 0.0 <= result.metrics["acc"] <= 1.0
    assert {"coeff/rgb", "coeff/depth", "coeff/imu"} <= set(result.trace.steps().columns)
    stats = namespace["stats"]
    assert {"coeff/audio", "coeff/video", "acc_head/audio"} <= set(stats)


def test_readme_make_targets_exist():
    makefile = (ROOT / "Makefile").read_text()
    for target in re.findall(r"make (\w+)", README):
        assert re.search(rf"^{target}:", makefile, re.M), f"README mentions `make {target}`"
    assert (ROOT / ".ci/run").read_text().strip().endswith("make test")


def test_cli_help_lists_the_commands():
    out = subprocess.run([sys.executable, "-m", "cggmlib", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "train" in out.stdout
