"""The README's and docs' code works: the bring-your-own examples (docs/your_model.md) run as written,
the commands the README names exist, and every docs page it links to exists."""
import re
import subprocess
import sys

import torch

from conftest import ROOT

README = (ROOT / "README.md").read_text()
YOUR_MODEL = (ROOT / "docs" / "your_model.md").read_text()


def readme_blocks() -> list[str]:
    """Python blocks of docs/your_model.md from the one marked `<!-- tested ... -->` to the end of that section."""
    start = YOUR_MODEL.index("<!-- tested")
    section = YOUR_MODEL[start:YOUR_MODEL.index("\n## ", start)]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_bring_your_own_examples_run():
    blocks = readme_blocks()
    assert len(blocks) == 2
    torch.manual_seed(0)
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "docs/your_model.md", "exec"), namespace)
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


def test_readme_is_a_front_door_and_its_links_resolve():
    assert len(README.splitlines()) <= 220
    for link in re.findall(r"\]\(((?:docs/)[^)#]+)", README):
        assert (ROOT / link).is_file(), f"README links to {link}, which does not exist"
    for page in (ROOT / "docs").glob("*.md"):
        for link in re.findall(r"\]\(([\w.-]+\.md)", page.read_text()):
            assert (ROOT / "docs" / link).is_file(), f"{page.name} links to {link}, which does not exist"


def test_no_document_cites_a_reference_the_project_does_not_ship():
    # the background notes' section marks and their path ([/] keeps this guard from matching itself)
    # ("reference (§6)" and "reference notes (§6)" too: a section mark within a few words of "reference")
    pattern = re.compile(r"reference[\w ]{0,12}\(?§|reference D\d|shared[/]reference")
    paths = [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "data_cards").glob("*.md"),
             *(ROOT / "cggmlib").rglob("*.py"), *(ROOT / "cggmlib").rglob("*.csv"), *(ROOT / "notebooks").glob("*.ipynb"),
             *(p for p in (ROOT / "tests").glob("*.py") if p.name != "test_readme.py")]
    for path in paths:
        hits = [n for n, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
        assert not hits, f"{path.relative_to(ROOT)} lines {hits} cite a document outside the repository"
