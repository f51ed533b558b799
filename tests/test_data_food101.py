"""UPMC-Food101 loader on its stand-in: JSON through `datasets`, tiny BERT/ViT features, the cache,
the dev split, and one bad-input test per kind of problem."""
import json
import random
import shutil

import numpy as np
import pytest
import torch

import cggmlib as cg
from cggmlib.data import food101, food101_features
from cggmlib.data.standins import food101 as standin
from cggmlib.errors import DataError
from cggmlib.tasks import Classification


# meant to keep this file on one xdist worker (`make test` uses --dist loadgroup), so the stand-in is
# written once; pytest-xdist 3.8 does not group under pytest 9.2, so each worker writes its own
pytestmark = pytest.mark.xdist_group("food101")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """DATA_ROOT with food101/ written by the stand-in writer and loaded once (features cached)."""
    data_root = tmp_path_factory.mktemp("data")
    standin.write(data_root / "food101", seed=0, classes=4, train=80, test=24)
    cg.load_data("food101", data_root, batch_size=16)
    return data_root


def copy(root, tmp_path):
    shutil.copytree(root / "food101", tmp_path / "food101")
    return tmp_path


def test_loads_cached_features_with_the_documented_shapes(root, monkeypatch):
    monkeypatch.setattr(food101_features, "_extract", lambda *a, **k: pytest.fail("features were recomputed"))
    data = cg.load_data("food101", root, batch_size=16)
    assert data.standin and data.modalities == ["image", "text"] and data.input_dims == {"image": 32, "text": 32}
    assert isinstance(data.task, Classification) and data.task.num_classes == 101
    batch = next(iter(data.train))
    assert batch.inputs["image"].shape == (16, 197, 32) and batch.inputs["text"].shape == (16, 50, 32)
    assert batch.inputs["image"].dtype == torch.float32 and batch.target.dtype == torch.int64
    rows = json.loads((root / "food101/train.json").read_text())
    names = {r["id"]: r["label"] for r in rows}
    assert [food101.CLASS_NAMES[t] for t in batch.target] == [names[i] for i in batch.meta["id"]]
    assert data.info["sizes"] == {"train": 72, "val": 8, "test": 24}


def test_dev_split_is_stratified_disjoint_and_independent_of_the_training_seed(root):
    a = cg.load_data("food101", root, batch_size=100, seed=0)
    b = cg.load_data("food101", root, batch_size=100, seed=5)
    train_ids, dev_ids = next(iter(a.train)).meta["id"], next(iter(a.val)).meta["id"]
    assert not set(train_ids) & set(dev_ids) and len(train_ids) + len(dev_ids) == 80
    assert sorted(dev_ids) == sorted(next(iter(b.val)).meta["id"])
    assert torch.bincount(next(iter(a.val)).target).max() == 2  # 2 of each class's 20
    official = cg.load_data("food101", root, batch_size=100, dev_fraction=0)
    assert next(iter(official.val)).meta["id"] == next(iter(official.test)).meta["id"]


def test_cached_features_equal_a_direct_bert_and_vit_pass(root):
    import transformers as T
    from PIL import Image

    data = cg.load_data("food101", root, batch_size=100, shuffle=False, dev_fraction=0)
    test = next(iter(data.test))
    row = json.loads((root / "food101/test.json").read_text())[3]
    models = root / "food101/models"
    tok = T.BertTokenizerFast.from_pretrained(models / "bert-base-uncased")
    enc = tok(" ".join(row["text_tokens"]), padding="max_length", max_length=50, truncation=True, return_tensors="pt")
    vit = T.ViTModel.from_pretrained(models / "vit-base-patch16-224", add_pooling_layer=False).eval()
    pixels = Image.open(root / "food101" / row["img_path"]).convert("RGB").resize((224, 224), Image.BILINEAR)
    x = (torch.from_numpy(np.asarray(pixels, np.float32) / 255).permute(2, 0, 1)[None] - 0.5) / 0.5
    with torch.no_grad():
        text = T.BertModel.from_pretrained(models / "bert-base-uncased", add_pooling_layer=False)(**enc)
        image = vit(pixel_values=x).last_hidden_state
    assert test.meta["id"][3] == row["id"]
    torch.testing.assert_close(test.inputs["text"][3], text.last_hidden_state[0], atol=2e-2, rtol=1e-2)
    torch.testing.assert_close(test.inputs["image"][3], image[0], atol=2e-2, rtol=1e-2)


def test_official_image_norm_has_its_own_cache_and_the_same_text(root):
    vit = cg.load_data("food101", root, batch_size=8, dev_fraction=0)
    off = cg.load_data("food101", root, batch_size=8, dev_fraction=0, image_norm="official")
    assert off.info["features"] != vit.info["features"]
    a, b = next(iter(vit.test)), next(iter(off.test))
    assert torch.equal(a.inputs["text"], b.inputs["text"]) and not torch.allclose(a.inputs["image"], b.inputs["image"])


def test_training_order_is_seeded_per_epoch_or_the_official_fixed_order(root):
    data = cg.load_data("food101", root, batch_size=100, seed=1)
    first = next(iter(data.train)).meta["id"]
    data.train.set_epoch(1)
    assert next(iter(data.train)).meta["id"] != first
    data.train.set_epoch(0)
    assert next(iter(data.train)).meta["id"] == first
    fixed = cg.load_data("food101", root, batch_size=100, shuffle=False, dev_fraction=0)
    order = list(range(80))
    random.Random(0).shuffle(order)
    assert next(iter(fixed.train)).meta["id"] == [f"train_{i:05d}" for i in order]


def test_doctor_check_passes_on_the_standin(root):
    report = food101.check(root / "food101")
    assert report.ok, report.problems
    assert {"check": "train.json samples", "value": 80, "ok": True} in report.rows


def _edit_json(folder, split, fn):
    rows = json.loads((folder / f"{split}.json").read_text())
    (folder / f"{split}.json").write_text(json.dumps(fn(rows)))


BAD = {
    "missing folder": (lambda f: shutil.rmtree(f), "dataset folder does not exist"),
    "missing file": (lambda f: (f / "test.json").unlink(), "test split file is missing"),
    "invalid JSON": (lambda f: (f / "train.json").write_text('[{"id": "a", "label": '), "not valid JSON"),
    "missing key": (lambda f: _edit_json(f, "train", lambda r: [{k: v for k, v in x.items() if k != "label"}
                                                                 for x in r]), "no 'label' key"),
    "missing value": (lambda f: _edit_json(f, "test", lambda r: r[:5] + [{**r[5], "img_path": None}] + r[6:]),
                      "img_path = None"),
    "unknown label": (lambda f: _edit_json(f, "train", lambda r: [{**r[0], "label": "pasta"}] + r[1:]),
                      "unknown label 'pasta'"),
    "empty split": (lambda f: (f / "test.json").write_text("[]"), "test split is empty"),
    "text not a list": (lambda f: _edit_json(f, "train", lambda r: [{**r[0], "text_tokens": "a b"}] + r[1:]),
                        "text_tokens = 'a b'"),
    "duplicate id": (lambda f: _edit_json(f, "train", lambda r: r + [r[0]]), "repeats the id"),
    "missing model folder": (lambda f: shutil.rmtree(f / "models/vit-base-patch16-224"), "huggingface-cli download"),
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_bad_input_raises_a_data_error_naming_the_problem(root, tmp_path, kind):
    corrupt, expected = BAD[kind]
    data_root = copy(root, tmp_path)
    corrupt(data_root / "food101")
    with pytest.raises(DataError, match=expected) as err:
        cg.load_data("food101", data_root)
    assert "data_cards/food101.md" in str(err.value)


@pytest.mark.parametrize("kind", ["truncated", "missing"])
def test_unreadable_image_names_the_file_and_sample(root, tmp_path, kind):
    data_root = copy(root, tmp_path)
    image = data_root / "food101" / json.loads((data_root / "food101/test.json").read_text())[0]["img_path"]
    if kind == "truncated":
        image.write_bytes(image.read_bytes()[:200])
    else:
        image.unlink()
    with pytest.raises(DataError, match="image of sample 0 .* is unreadable") as err:
        cg.load_data("food101", data_root, cache_dir=tmp_path / "fresh-cache")
    assert str(image) in str(err.value) and "img_path" in str(err.value)
    assert not list((tmp_path / "fresh-cache").glob("*/test.*.npy")), "a failed extraction left cache files"
    assert not food101.check(data_root / "food101").ok


def test_absolute_image_paths_from_another_machine_are_rerooted(root, tmp_path):
    data_root = copy(root, tmp_path)
    _edit_json(data_root / "food101", "test",
               lambda rows: [{**r, "img_path": "/elsewhere/UPMC_Food101/" + r["img_path"]} for r in rows])
    moved = cg.load_data("food101", data_root, batch_size=100, dev_fraction=0)
    before = cg.load_data("food101", root, batch_size=100, dev_fraction=0)
    assert torch.equal(next(iter(moved.test)).inputs["image"], next(iter(before.test)).inputs["image"])
