"""BraTS 2021 loader on its stand-in: NIfTI through MONAI, the preprocessing cache, both evaluation
protocols, slice sampling, the committed split rule, and one bad-input test per kind of problem."""
import gzip
import json
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch

import cggmlib as cg
from cggmlib.data import brats, brats_cache
from cggmlib.data.brats_slices import draw_slices, rot_flip_noise
from cggmlib.data.standins import brats as standin
from cggmlib.errors import DataError
from cggmlib.tasks import Segmentation

SIZE, DEPTH = 176, 16


# meant to keep this file on one xdist worker (`make test` uses --dist loadgroup), so the stand-in is
# written once; pytest-xdist 3.8 does not group under pytest 9.2, so each worker writes its own
pytestmark = pytest.mark.xdist_group("brats2021")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """DATA_ROOT with brats2021/ (8 cases) written by the stand-in writer and preprocessed once."""
    data_root = tmp_path_factory.mktemp("data")
    standin.write(data_root / "brats2021", seed=0, cases=8, size=SIZE, depth=DEPTH)
    cg.load_data("brats2021", data_root, batch_size=4)
    return data_root


def test_batches_have_the_documented_shapes_and_labels(root, monkeypatch):
    monkeypatch.setattr(brats_cache, "preprocess", lambda *a: pytest.fail("a cached case was preprocessed again"))
    data = cg.load_data("brats2021", root, batch_size=4)
    assert data.standin and data.modalities == ["flair", "t1ce", "t1", "t2"] and isinstance(data.task, Segmentation)
    assert data.info["cases"] == {"train": 5, "val": 1, "test": 2}
    batch = next(iter(data.train))
    assert all(x.shape == (4, 1, 160, 160) and x.dtype == torch.float32 for x in batch.inputs.values())
    assert batch.target.shape == (4, 160, 160) and batch.target.dtype == torch.int64
    assert set(batch.target.unique().tolist()) <= {0, 1, 2, 3} and (batch.target == 3).any()
    assert len(batch.meta["case"]) == 4 and all(c.startswith("BraTS2021_") for c in batch.meta["case"])


def test_cache_equals_an_independent_nibabel_zscore_and_crop(root):
    case = sorted((root / "brats2021").glob("BraTS2021_*"))[0]
    cached = np.load(next((root / "brats2021/cache").glob(f"*/{case.name}/image.npy")))
    labels = np.load(next((root / "brats2021/cache").glob(f"*/{case.name}/label.npy")))
    t1ce = np.asarray(nib.load(case / f"{case.name}_t1ce.nii.gz").dataobj, dtype=np.float64)
    brain = t1ce != 0
    t1ce[brain] = (t1ce[brain] - t1ce[brain].mean()) / t1ce[brain].std()
    seg = np.asarray(nib.load(case / f"{case.name}_seg.nii.gz").dataobj)
    seg[seg == 4] = 3
    assert cached.shape == (DEPTH, 4, 160, 160) and cached.dtype == np.float16
    np.testing.assert_allclose(cached[:, 1], t1ce[8:168, 8:168].transpose(2, 0, 1), atol=5e-3)
    np.testing.assert_array_equal(labels, seg[8:168, 8:168].transpose(2, 0, 1))


def test_official_protocol_draws_one_fixed_tumour_slice_per_case(root):
    data = cg.load_data("brats2021", root, batch_size=8)
    first = next(iter(data.test))
    assert len(first) == 2 and sorted(first.meta["case"]) == sorted(set(first.meta["case"]))
    assert all(t.any() for t in first.target)
    data.test.set_epoch(3)
    again = next(iter(data.test))
    assert again.meta == first.meta and torch.equal(again.target, first.target)


def test_all_protocol_gives_every_slice_and_per_volume_dice(root):
    data = cg.load_data("brats2021", root, batch_size=7, eval_protocol="all")
    meter, n = data.task.new_meter(), 0
    for batch in data.test:
        perfect = torch.nn.functional.one_hot(batch.target, 4).movedim(-1, 1).float()
        meter.update(perfect, batch.target, batch.meta)
        n += len(batch)
    assert n == 2 * DEPTH == data.info["sizes"]["test"]
    scores = meter.compute()
    assert scores["dice_mean"] == pytest.approx(1.0) and scores["dice_mean_volume"] == pytest.approx(1.0)


def test_training_slices_are_redrawn_per_epoch_reproducibly(root):
    data = cg.load_data("brats2021", root, batch_size=8, seed=3)
    draws = []
    for epoch in (0, 1, 0):
        data.train.set_epoch(epoch)
        batch = next(iter(data.train))
        draws.append((list(zip(batch.meta["case"], batch.meta["slice"])), batch.inputs["flair"]))
    assert draws[0][0] == draws[2][0] and torch.equal(draws[0][1], draws[2][1])
    assert draws[0][0] != draws[1][0]
    tumour = cg.load_data("brats2021", root, batch_size=8, train_slices="tumour")
    every = cg.load_data("brats2021", root, batch_size=8, train_slices="all", augment=False)
    assert 5 < tumour.info["sizes"]["train"] < 5 * DEPTH == every.info["sizes"]["train"]


def test_augmentation_moves_labels_with_the_image():
    labels = np.random.default_rng(0).integers(0, 4, size=(160, 160))
    for seed in range(20):
        image, moved = rot_flip_noise(np.stack([labels.astype(np.float32)] * 4), labels, np.random.default_rng(seed))
        assert image.shape == (4, 160, 160) and np.abs(image - moved).max() < 0.6


def test_the_sampler_is_robust_to_short_volumes_and_the_slice_limit():
    metas = [{"depth": 8, "tumour_slices": [5, 6]}, {"depth": 200, "tumour_slices": [130, 150]},
             {"depth": 8, "tumour_slices": []}]
    drawn = draw_slices(metas, np.random.default_rng(0), slice_limit=128)
    assert drawn[0][1] in (5, 6) and drawn[1][1] in (130, 150) and 0 <= drawn[2][1] < 8
    assert draw_slices(metas[:1], np.random.default_rng(0), slice_limit=6)[0][1] == 5


def test_the_split_rule_is_fixed_and_independent_of_the_subset(root):
    manifest = brats.split_manifest()
    ids = [f"BraTS2021_{k:05d}" for k in range(0, 1700, 3)]
    full = brats.resolve_split(ids, manifest)
    part = brats.resolve_split(ids[::7], manifest)
    assert all(set(part[s]) <= set(full[s]) for s in part)
    shares = {s: len(v) / len(ids) for s, v in full.items()}
    assert shares == pytest.approx(manifest["fractions"], abs=0.05)
    assert [brats.assign(f"BraTS2021_{k:05d}", manifest) for k in range(6)] == \
        ["train", "train", "train", "train", "train", "val"]
    written = json.loads(next((root / "brats2021/cache").glob("*/split.json")).read_text())
    cases = sorted(p.name for p in (root / "brats2021").glob("BraTS2021_*"))
    assert {s: written[s] for s in brats.SPLITS} == brats.resolve_split(cases, manifest)


def test_doctor_check_passes_on_the_standin(root):
    report = brats.check(root / "brats2021")
    assert report.ok, report.problems
    assert {"check": "case folders", "value": 8, "ok": True} in report.rows


def _nii(path, array):
    path.write_bytes(gzip.compress(nib.Nifti1Image(array, np.eye(4)).to_bytes()))


def _first(folder):
    return sorted(folder.glob("BraTS2021_*"))[0]


def _nan(folder):
    case = _first(folder)
    flair = np.asarray(nib.load(case / f"{case.name}_flair.nii.gz").dataobj, dtype=np.float32)
    flair[80, 80, 3] = np.nan
    _nii(case / f"{case.name}_flair.nii.gz", flair)


def _labels(folder):
    case = _first(folder)
    seg = np.asarray(nib.load(case / f"{case.name}_seg.nii.gz").dataobj).copy()
    seg[80, 80, 3] = 3
    _nii(case / f"{case.name}_seg.nii.gz", seg)


def _small(folder):
    case = _first(folder)
    for m in brats_cache.FILES:
        _nii(case / f"{case.name}_{m}.nii.gz", np.zeros((150, 150, DEPTH), np.uint8 if m == "seg" else np.int16))


def _truncate(folder):
    file = _first(folder) / f"{_first(folder).name}_t2.nii.gz"
    file.write_bytes(file.read_bytes()[:5000])


def _only_train(folder):
    manifest = brats.split_manifest()
    for case in folder.glob("BraTS2021_*"):
        if brats.assign(case.name, manifest) != "train":
            shutil.rmtree(case)


BAD = {
    "missing folder": (lambda f: shutil.rmtree(f), "dataset folder does not exist"),
    "no case folders": (lambda f: [shutil.rmtree(c) for c in f.glob("BraTS2021_*")], "no case folder found"),
    "missing file": (lambda f: (_first(f) / f"{_first(f).name}_seg.nii.gz").unlink(), "has no seg volume"),
    "truncated nii.gz": (_truncate, "_t2.nii.gz cannot be read"),
    "wrong volume shape": (_small, r"has shape \(150, 150, 16\)"),
    "shapes disagree": (lambda f: _nii(_first(f) / f"{_first(f).name}_t1.nii.gz", np.ones((SIZE, SIZE, 12), np.int16)),
                        "modality shapes .* disagree: t1"),
    "labels outside 0,1,2,4": (_labels, r"label values \[3\]"),
    "NaN intensities": (_nan, "flair.nii.gz contains NaN"),
    "empty split": (_only_train, "the val split is empty"),
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_bad_input_raises_a_data_error_naming_the_problem(root, tmp_path, kind):
    corrupt, expected = BAD[kind]
    shutil.copytree(root / "brats2021", tmp_path / "brats2021")  # cache included: only the broken case is re-read
    corrupt(tmp_path / "brats2021")
    with pytest.raises(DataError, match=expected) as err:
        cg.load_data("brats2021", tmp_path)
    assert "data_cards/brats2021.md" in str(err.value)
    if kind not in ("missing folder", "no case folders", "empty split"):
        assert _first(tmp_path / "brats2021").name in str(err.value)
        assert not brats.check(tmp_path / "brats2021", full=True).ok
