"""CMU-MOSI loader on its stand-in (MulT pickles written by the project) and on broken copies of it."""
import pickle

import numpy as np
import pytest
import torch

import cggmlib as cg
from cggmlib.data.standins import MARKER, write_standin
from cggmlib.errors import ConfigError, DataError

pytestmark = pytest.mark.filterwarnings("ignore:CMU-MOSI")
SIZES = dict(train=40, valid=12, test=16, seq_len=20)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("mosi_root")
    write_standin("mosi", root, seed=3, **SIZES)
    return root


@pytest.fixture
def broken(root, tmp_path):
    """A copy of the stand-in pickle whose content a test edits: broken(edit) -> data root."""
    def make(edit):
        obj = pickle.loads((root / "mosi" / "mosi_data.pkl").read_bytes())
        new = edit(obj)
        obj = new if isinstance(new, dict) else obj
        (tmp_path / "mosi").mkdir(exist_ok=True)
        (tmp_path / "mosi" / "mosi_data.pkl").write_bytes(pickle.dumps(obj))
        return tmp_path
    return make


def load(root, **kw):
    return cg.load_data("mosi", root, batch_size=16, seed=0, **kw)


def assert_clear(err: DataError, *fragments):
    text = str(err)
    assert "data_cards/mosi.md" in text, text
    for f in fragments:
        assert f in text, (f, text)


def test_standin_loads_with_real_shapes_dtypes_and_flag(root):
    with pytest.warns(UserWarning, match="non-finite"):
        data = load(root)
    assert data.standin and data.info["standin"] and (root / "mosi" / MARKER).is_file()
    assert data.modalities == ["text", "audio", "vision"]
    assert data.input_dims == {"text": 300, "audio": 5, "vision": 20}
    assert data.info["sizes"] == {"train": 40, "val": 12, "test": 16}
    assert isinstance(data.task, cg.tasks.Regression)
    replaced = data.info["nonfinite_replaced"]
    assert sum(replaced["train"].values()) > 0 and replaced["train"]["text"] == 0
    for split in (data.train, data.val, data.test):
        for batch in split:
            assert all(x.dtype == torch.float32 and x.shape[1:] == (20, data.input_dims[m])
                       and torch.isfinite(x).all() for m, x in batch.inputs.items())
            assert batch.target.dtype == torch.float32 and batch.target.dim() == 1
            assert batch.target.abs().max() <= 3


def test_unaligned_file_and_file_option(root):
    data = load(root, aligned=False)
    batch = next(iter(data.val))
    assert {m: x.shape[1] for m, x in batch.inputs.items()} == {"text": 20, "audio": 375, "vision": 500}
    assert load(root, file="mosi_data_noalign.pkl").info["file"].endswith("mosi_data_noalign.pkl")


def test_targets_match_the_pickle_and_shuffle_is_seeded(root):
    obj = pickle.loads((root / "mosi" / "mosi_data.pkl").read_bytes())
    plain = load(root, shuffle=False)
    assert torch.equal(torch.cat([b.target for b in plain.train]), torch.from_numpy(obj["train"]["labels"].reshape(-1)))
    order = lambda d: torch.cat([b.target for b in d.train])  # noqa: E731
    a, b = load(root), load(root)
    other = cg.load_data("mosi", root, batch_size=16, seed=1)
    assert torch.equal(order(a), order(b)) and not torch.equal(order(a), order(other))
    assert not torch.equal(order(a), order(plain))
    assert torch.equal(torch.cat([x.target for x in a.test]), torch.cat([x.target for x in other.test]))


def test_mmsa_layout_is_read(root, tmp_path):
    obj = pickle.loads((root / "mosi" / "mosi_data_noalign.pkl").read_bytes())
    mmsa = {s: {"text": d["text"], "audio": d["audio"], "vision": d["vision"], "id": d["id"],
                "regression_labels": d["labels"].reshape(-1), "raw_text": np.array(["a b"] * len(d["id"])),
                "text_bert": np.zeros((len(d["id"]), 3, 20)), "audio_lengths": [375] * len(d["id"])}
            for s, d in obj.items()}
    (tmp_path / "mosi").mkdir()
    (tmp_path / "mosi" / "unaligned_50.pkl").write_bytes(pickle.dumps(mmsa))
    data = load(tmp_path, file="unaligned_50.pkl")
    assert data.info["layout"] == "mmsa" and not data.standin
    assert torch.equal(torch.cat([b.target for b in load(tmp_path, file="unaligned_50.pkl", shuffle=False).train]),
                       torch.from_numpy(obj["train"]["labels"].reshape(-1)))
    for d in mmsa.values():
        del d["text"]
    (tmp_path / "mosi" / "unaligned_50.pkl").write_bytes(pickle.dumps(mmsa))
    with pytest.raises(DataError) as e:
        load(tmp_path, file="unaligned_50.pkl")
    assert_clear(e.value, "text_bert", "regression_labels", "expected: MulT keys")


def test_missing_folder_and_file(tmp_path):
    with pytest.raises(DataError) as e:
        load(tmp_path)
    assert_clear(e.value, "folder not found", "make-standin mosi")
    (tmp_path / "mosi").mkdir()
    (tmp_path / "mosi" / "mosi_data_noalign.pkl").write_bytes(b"x")
    with pytest.raises(DataError) as e:
        load(tmp_path)
    assert_clear(e.value, "mosi_data.pkl", "pickles present: ['mosi_data_noalign.pkl']", "aligned=False")


def test_wrong_top_level_and_split_keys(broken):
    with pytest.raises(DataError) as e:
        load(broken(lambda o: {"train": o["train"], "dev": o["valid"], "test": o["test"]}))
    assert_clear(e.value, "mosi_data.pkl", "field: top-level keys", "['dev', 'test', 'train']")
    with pytest.raises(DataError) as e:
        load(broken(lambda o: o["valid"].pop("vision")))
    assert_clear(e.value, "field: valid", "keys ['audio', 'id', 'labels', 'text']", "expected: MulT keys")


def test_wrong_shape(broken):
    with pytest.raises(DataError) as e:
        load(broken(lambda o: o["train"].update(text=o["train"]["text"][:, 0])))
    assert_clear(e.value, "field: train/text", "(40, 300)", "(N, T, d)")
    with pytest.raises(DataError) as e:
        load(broken(lambda o: o["test"].update(labels=np.zeros((16, 2), np.float32))))
    assert_clear(e.value, "field: test/labels", "one score per sample")


def test_feature_size_must_agree_across_splits(broken):
    with pytest.raises(DataError) as e:
        load(broken(lambda o: o["test"].update(audio=o["test"]["audio"][:, :, :4])))
    assert_clear(e.value, "field: audio", "different sizes across splits")


def test_nan_labels(broken):
    def edit(o):
        o["train"]["labels"][5] = np.nan
    with pytest.raises(DataError) as e:
        load(broken(edit))
    assert_clear(e.value, "field: train/labels", "NaN/inf label(s), first at sample 5", "finite sentiment")


def test_labels_out_of_range(broken):
    def edit(o):
        o["valid"]["labels"][0] = 7.0
    with pytest.raises(DataError) as e:
        load(broken(edit))
    assert_clear(e.value, "field: valid/labels", "[", "7", "expected: sentiment scores in [-3, 3]")


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_truncated_or_corrupted_pickle(root, tmp_path, damage):
    raw = (root / "mosi" / "mosi_data.pkl").read_bytes()
    (tmp_path / "mosi").mkdir()
    (tmp_path / "mosi" / "mosi_data.pkl").write_bytes(raw[: len(raw) // 2] if damage == "truncate" else b"\x00junk" * 9)
    with pytest.raises(DataError) as e:
        load(tmp_path)
    assert_clear(e.value, "mosi_data.pkl is truncated or corrupted", "download it again")


def test_empty_split(broken):
    with pytest.raises(DataError) as e:
        load(broken(lambda o: o.update(test={k: v[:0] for k, v in o["test"].items()})))
    assert_clear(e.value, "split 'test'", "is empty", "field: test")


def test_modalities_of_different_lengths(broken):
    with pytest.raises(DataError) as e:
        load(broken(lambda o: o["train"].update(vision=o["train"]["vision"][:-3])))
    assert_clear(e.value, "modalities of different lengths", "'vision': 37", "'labels': 40")


def test_unknown_option_is_a_config_error(root):
    with pytest.raises(ConfigError, match="aligned"):
        load(root, algined=False)
