"""`cggm doctor` and `cggm make-standin` through the CLI, on good and broken stand-ins; loader_bench."""
import json
import pickle
import subprocess
import sys

import numpy as np
import pytest

from cggmlib.commands import main
from cggmlib.data.loader_bench import bench
from cggmlib.data.standins import MARKER, write_standin
from cggmlib.errors import ConfigError, DataError

pytestmark = pytest.mark.filterwarnings("ignore:CMU-MOSI")
MOSI = dict(train=30, valid=10, test=10, seq_len=10, noalign=False)


@pytest.fixture
def data_root(tmp_path):
    write_standin("mosi", tmp_path, **MOSI)
    write_standin("iemocap", tmp_path, utterances=40, long_audio=1, folds=2)
    return tmp_path


def doctor(capsys, *args):
    rc = main(["doctor", *map(str, args)])
    return rc, capsys.readouterr().out


def test_doctor_passes_good_standins_and_lists_absent_ones(data_root, capsys):
    rc, out = doctor(capsys, "--data-root", data_root)
    assert rc == 0, out
    assert "== mosi" in out and "== iemocap" in out and "== mfeat" in out
    assert out.count("[STAND-IN: synthetic data]") == 2
    assert "absent (no folder):" in out and "brats2021" in out and "no problems found" in out
    assert "audio longer than 350 frames" in out and "fold 2: N [class counts]" in out


def test_doctor_reports_a_broken_file_and_exits_nonzero(data_root, capsys):
    f = data_root / "mosi" / "mosi_data.pkl"
    obj = pickle.loads(f.read_bytes())
    obj["valid"]["labels"][3] = np.nan
    f.write_bytes(pickle.dumps(obj))
    (data_root / "iemocap" / "V" / "denseface.h5").write_bytes(b"not hdf5")
    rc, out = doctor(capsys, "--data-root", data_root)
    assert rc == 1
    assert "FAIL" in out and "field: valid/labels" in out and "NaN/inf" in out
    assert "denseface.h5 is truncated, corrupted or not HDF5" in out and "problems in: mosi, iemocap" in out


def test_doctor_on_a_named_absent_dataset_and_json(tmp_path, data_root, capsys):
    rc, out = doctor(capsys, "--data-root", tmp_path / "empty", "--dataset", "mosi")
    assert rc == 1 and "does not exist" in out and "make-standin mosi" in out
    assert main(["doctor", "--data-root", str(tmp_path / "typo")]) == 1
    assert "typo does not exist" in capsys.readouterr().err
    rc, out = doctor(capsys, "--data-root", data_root, "--dataset", "iemocap", "--json")
    report = json.loads(out)
    assert rc == 0 and report[0]["dataset"] == "iemocap" and report[0]["ok"] and report[0]["problems"] == []
    rc = main(["doctor", "--data-root", str(data_root), "--dataset", "mnist"])
    assert rc == 2 and "unknown dataset(s) ['mnist']" in capsys.readouterr().err


def test_make_standin_cli_writes_checks_and_refuses_real_data(tmp_path, capsys):
    args = ["make-standin", "mosi", "--out", str(tmp_path),
            "--size", "train=20", "--size", "valid=8", "--size", "test=8", "--size", "noalign=False"]
    done = subprocess.run([sys.executable, "-m", "cggmlib", *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "doctor: ok" in done.stdout and (tmp_path / "mosi" / MARKER).is_file()
    assert sorted(p.name for p in (tmp_path / "mosi").iterdir()) == [MARKER, "mosi_data.pkl"]
    assert main(args) == 2 and "--force" in capsys.readouterr().err
    assert main([*args, "--force", "--size", "train=12"]) == 0 and "doctor: ok" in capsys.readouterr().out
    (tmp_path / "real" / "mosi").mkdir(parents=True)
    (tmp_path / "real" / "mosi" / "mosi_data.pkl").write_bytes(b"real data")
    with pytest.raises(DataError, match="not a stand-in"):
        write_standin("mosi", tmp_path / "real", overwrite=True)
    assert (tmp_path / "real" / "mosi" / "mosi_data.pkl").read_bytes() == b"real data"


def test_write_standin_rejects_unknown_names_and_sizes(tmp_path):
    with pytest.raises(ConfigError, match="no stand-in"):
        write_standin("mnist", tmp_path)
    with pytest.raises(ConfigError, match="utterances"):
        write_standin("iemocap", tmp_path, utterence=5)


def test_loader_bench_prints_one_parsable_line_per_dataset(tmp_path):
    lines = []
    results = bench(["mosi", "mfeat"], batch_size=32, epochs=1, out=lines.append)
    assert [r["dataset"] for r in results] == ["mosi", "mfeat"] and len(lines) == 2
    fields = dict(kv.split("=", 1) for kv in lines[0].split())
    assert fields["dataset"] == "mosi" and fields["standin"] == "True" and float(fields["samples_per_s"]) > 0
    assert results[1]["standin"] is False and results[1]["train_samples"] == 1200
