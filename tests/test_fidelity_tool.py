"""`python -m cggmlib.fidelity`: the parts that run without a clone of the released code.

The released names are written here from zrguo/CGGM@21e428c models/msamodel.py, models/foodmodel.py and
modules/transformer.py; the mapping must land every one of our parameters (strict load)."""
import re

import pytest
import torch

import cggmlib as cg
from cggmlib.fidelity import released, weights
from cggmlib.files import write_block
from cggmlib.models.food import FoodModel
from cggmlib.models.msa import MSAModel


def released_names(ours: dict, modalities: list, food: bool = False) -> dict:
    """Our state dict renamed as the released model names it (inverse of weights.model_state)."""
    out = {}
    for name, value in ours.items():
        for pattern, repl in [(r"\.attn\.", ".self_attn."), (r"\.norm1\.", ".layer_norms.0."),
                              (r"\.norm2\.", ".layer_norms.1."), (r"(^|\.)norm\.", r"\1layer_norm.")]:
            name = re.sub(pattern, repl, name)
        if food:
            name = name.replace("encoders.image.encoder.", "vision_encoder.").replace("encoders.text.encoder.", "text_encoder.")
            if name.startswith("encoders.text.proj."):
                continue  # the same module as the image projection: `projv`
            name = name.replace("encoders.image.proj.", "projv.")
        else:
            for i, m in enumerate(modalities):
                name = name.replace(f"encoders.{m}.encoder.", f"encoders.{i}.").replace(f"encoders.{m}.proj.", f"proj.{i}.")
        out[name] = value
    return out


@pytest.mark.parametrize("food", [False, True])
def test_released_state_dicts_map_onto_every_parameter(food):
    torch.manual_seed(0)
    dims = {"image": 12, "text": 12} if food else {"text": 7, "audio": 5, "vision": 6}
    cls = FoodModel if food else MSAModel
    a, b = cls(dims, 3, dim=10, heads=2, layers=3, fusion_layers=1), cls(dims, 3, dim=10, heads=2, layers=3, fusion_layers=1)
    theirs = released_names(a.state_dict(), list(dims), food)
    assert not [n for n in theirs if n.startswith("encoders.") and not re.match(r"encoders\.\d", n)]
    b.load_state_dict(weights.model_state(theirs, list(dims)), strict=True)
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name
    assert weights.max_difference(a.state_dict(), b.state_dict()) == (0.0, "")


def test_write_block_replaces_only_the_marked_text(tmp_path):
    doc = tmp_path / "m.md"
    doc.write_text("before\n<!-- fidelity:begin -->\nold\n<!-- fidelity:end -->\nafter\n")
    write_block(doc, "new table", "fidelity")
    assert doc.read_text() == "before\n<!-- fidelity:begin -->\nnew table\n<!-- fidelity:end -->\nafter\n"
    (tmp_path / "n.md").write_text("no markers")
    with pytest.raises(cg.ResultsError, match="no <!-- fidelity:begin -->"):
        write_block(tmp_path / "n.md", "x", "fidelity")


def test_a_folder_that_is_not_the_released_code_is_named(tmp_path):
    with pytest.raises(cg.ConfigError, match="not a clone of zrguo/CGGM"):
        released.import_released(tmp_path)


def test_docs_carry_a_generated_fidelity_table():
    from pathlib import Path
    text = (Path(__file__).parents[1] / "docs" / "methods.md").read_text()
    block = text.split("<!-- fidelity:begin -->", 1)[1].split("<!-- fidelity:end -->", 1)[0]
    rows = [l for l in block.splitlines() if l.startswith("| ") and "official" in l]
    assert {r.split("|")[1].strip() for r in rows} == {"mosi", "iemocap", "food"}
    for row in rows:  # the bound on every parameter, the attention key bias included, and without it
        cells = row.split("|")
        assert float(cells[3]) <= 1e-3 and float(cells[5]) <= 1e-3 and float(cells[6]) <= 1e-6, row


@pytest.mark.parametrize("task", ["mosi", "food"])
def test_official_variant_within_1e3_of_the_released_code_after_20_steps(task):
    """Runs the released files themselves (docs/methods.md, "Fidelity"): set CGGM_RELEASED to a clone of
    zrguo/CGGM at 21e428c (with einops importable); skipped without one, as the project ships none of it."""
    import os
    from pathlib import Path

    root = os.environ.get("CGGM_RELEASED")
    if not root:
        pytest.skip("set CGGM_RELEASED=PATH to a clone of zrguo/CGGM@21e428c to run the released code")
    torch.set_num_threads(1)
    rel = released.import_released(Path(root).resolve())
    result, = released.compare(rel, task, steps=20, batch=24, only=("official",))
    assert result.max_param_diff <= 1e-3, result  # models and classifiers, the attention key bias included
    assert result.max_eps_diff == 0.0, result  # ε per step and modality, float64 on both sides
