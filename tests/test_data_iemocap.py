"""IEMOCAP loader on its stand-in (MMIN h5 + npy layout written by the project) and on broken copies."""
import shutil

import h5py
import numpy as np
import pytest
import torch

import cggmlib as cg
from cggmlib.data.standins import write_standin
from cggmlib.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("iemocap_root")
    write_standin("iemocap", root, seed=1, utterances=60, long_audio=3, folds=2)
    return root


@pytest.fixture
def copy(root, tmp_path):
    shutil.copytree(root / "iemocap", tmp_path / "iemocap")
    return tmp_path


def load(root, **kw):
    return cg.load_data("iemocap", root, batch_size=16, seed=0, **kw)


def assert_clear(err: DataError, *fragments):
    text = str(err)
    assert "data_cards/iemocap.md" in text, text
    for f in fragments:
        assert f in text, (f, text)


def test_standin_loads_with_real_dims_padding_and_flag(root):
    data = load(root)
    assert data.standin and isinstance(data.task, cg.tasks.Classification) and data.num_outputs == 4
    assert data.input_dims == {"text": 1024, "audio": 130, "vision": 342}
    assert sum(data.info["sizes"].values()) == 60 and data.info["fold"] == 1
    longest = 0
    for split in (data.train, data.val, data.test):
        for b in split:
            assert b.target.dtype == torch.int64 and 0 <= b.target.min() and b.target.max() < 4
            assert all(x.dtype == torch.float32 and x.dim() == 3 and x.shape[0] == len(b) for x in b.inputs.values())
            assert len(b.meta["id"]) == len(b) and b.meta["id"][0].startswith("Ses0")
            longest = max(longest, b.inputs["audio"].shape[1])
    assert longest > 350, "utterances longer than the official 350-frame pad must load"


def test_features_equal_the_h5_content_and_audio_uses_fold_statistics(root):
    data = load(root, shuffle=False)
    batch = next(iter(data.train))
    with h5py.File(root / "iemocap/L/bert_large.h5") as h5:
        raw = h5[batch.meta["id"][0]][()]
    assert torch.equal(batch.inputs["text"][0, :len(raw)], torch.from_numpy(raw))
    assert (batch.inputs["text"][0, len(raw):] == 0).all()
    frames = torch.cat([data.train.inputs["audio"][[i]][0, :n] for i, n in
                        enumerate(data.train.inputs["audio"].lengths.tolist())])
    assert frames.mean(0).abs().max() < 1e-3 and (frames.std(0) - 1).abs().max() < 1e-2


def test_padding_options_and_determinism(root):
    padded = load(root, audio_pad=350)
    assert all(b.inputs["audio"].shape[1] >= 350 for b in padded.val)
    cut = load(root, max_len={"audio": 100, "vision": 8})
    assert all(b.inputs["audio"].shape[1] <= 100 and b.inputs["vision"].shape[1] <= 8 for b in cut.train)
    with pytest.raises(ConfigError, match="max_len"):
        load(root, max_len={"sound": 5})
    utt = load(root, norm="utt", shuffle=False).train.inputs["audio"]
    first = utt[[0]][0, :int(utt.lengths[0])]
    assert first.mean(0).abs().max() < 1e-4 and (first.std(0) - 1).abs().max() < 1e-4
    ids = lambda d: [i for b in d.train for i in b.meta["id"]]  # noqa: E731
    assert ids(load(root)) == ids(load(root)) != ids(cg.load_data("iemocap", root, batch_size=16, seed=5))


def test_folds(root):
    one, two = load(root, fold=1), load(root, fold=2)
    test_ids = lambda d: {i for b in d.test for i in b.meta["id"]}  # noqa: E731
    assert test_ids(one).isdisjoint(test_ids(two))
    with pytest.raises(ConfigError, match="fold"):
        load(root, fold=11)
    with pytest.raises(DataError) as e:
        load(root, fold=3)
    assert_clear(e.value, "fold 3 not found", "folds present: ['1', '2']")


def test_missing_folder_and_file(tmp_path, copy):
    with pytest.raises(DataError) as e:
        load(tmp_path / "nowhere")
    assert_clear(e.value, "IEMOCAP folder not found", "make-standin iemocap")
    (copy / "iemocap/V/denseface.h5").unlink()
    with pytest.raises(DataError) as e:
        load(copy)
    assert_clear(e.value, "IEMOCAP file missing: V/denseface.h5", "MMIN feature release layout")


def test_truncated_h5_and_npy(copy):
    f = copy / "iemocap/L/bert_large.h5"
    f.write_bytes(f.read_bytes()[:2000])
    with pytest.raises(DataError) as e:
        load(copy)
    assert_clear(e.value, "bert_large.h5 is truncated, corrupted or not HDF5")
    f = copy / "iemocap/target/1/val_label.npy"
    f.write_bytes(f.read_bytes()[:100])
    with pytest.raises(DataError) as e:
        load(copy)
    assert_clear(e.value, "val_label.npy is truncated")


def test_wrong_feature_shape(copy):
    with h5py.File(copy / "iemocap/V/denseface.h5", "r+") as h5:
        name = sorted(h5)[0]
        del h5[name]
        h5[name] = np.zeros((12, 100), np.float32)
    with pytest.raises(DataError) as e:
        load(copy)
    assert_clear(e.value, f"denseface.h5['{name}'] is (12, 100)", "(T, 342) vision")


def _edit_labels(root, split, edit):
    f = root / "iemocap/target/1" / f"{split}_label.npy"
    np.save(f, edit(np.load(f)))


def test_nan_labels(copy):
    _edit_labels(copy, "trn", lambda y: np.where(np.arange(len(y))[:, None] == 2, np.nan, y))
    with pytest.raises(DataError) as e:
        load(copy)
    assert_clear(e.value, "trn_label.npy", "field: label", "NaN/inf")


@pytest.mark.parametrize("edit,fragment", [
    (lambda y: np.concatenate([y, np.zeros((len(y), 1), y.dtype)], 1), "(N, 4)"),
    (lambda y: y * 2, "not one-hot"),
    (lambda y: np.argmax(y, 1) + 2, "out of range"),
])
def test_labels_out_of_range(copy, edit, fragment):
    _edit_labels(copy, "val", edit)
    with pytest.raises(DataError) as e:
        load(copy)
    assert_clear(e.value, "val_label.npy", fragment)


def test_label_count_differs_from_ids_and_empty_split(copy):
    _edit_labels(copy, "tst", lambda y: y[:-1])
    with pytest.raises(DataError) as e:
        load(copy)
    assert_clear(e.value, "tst_int2name.npy lists", "labels")
    for kind in ("label", "int2name"):
        f = copy / "iemocap/target/1" / f"tst_{kind}.npy"
        np.save(f, np.load(f)[:0])
    with pytest.raises(DataError) as e:
        load(copy)
    assert_clear(e.value, "split 'tst' of fold 1 is empty")


def test_modalities_of_different_lengths(copy):
    ids = np.load(copy / "iemocap/target/1/trn_int2name.npy")
    with h5py.File(copy / "iemocap/A/comparE.h5", "r+") as h5:
        del h5[ids[4][0].decode()]
    with pytest.raises(DataError) as e:
        load(copy)
    assert_clear(e.value, "missing from comparE.h5: modalities of different lengths", ids[4][0].decode())


def test_missing_fold_statistics(copy):
    with h5py.File(copy / "iemocap/A/comparE_mean_std.h5", "r+") as h5:
        del h5["1"]
    with pytest.raises(DataError) as e:
        load(copy)
    assert_clear(e.value, "comparE_mean_std.h5 has no group '1'", "groups '1'..'10'")
    assert load(copy, norm="none").info["norm"] == "none"
