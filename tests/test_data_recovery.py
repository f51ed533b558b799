"""Recovery and checks of the data step, on files written by the real stand-in writers and then damaged:
a full disk and a kill while a stand-in is written, two writers at once, absurd feature values (doctor
and the non-finite stop), doctor reading every file (headers; `--full` decodes), stale feature caches."""
import gzip
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import nibabel as nib
import numpy as np
import pytest
import torch

import cggmlib as cg
from cggmlib.analysis import dataview
from cggmlib.commands import main
from cggmlib.data import brats, food101, mosi
from cggmlib.data.standins import MARKER, write_standin
from cggmlib.data.standins import brats as brats_standin
from cggmlib.data.standins import food101 as food_standin
from cggmlib.errors import DataError, NumericsError

ENV = os.environ | {"PYTHONPATH": os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", "")}
IEMOCAP = {"utterances": 40, "long_audio": 1, "folds": 2}


def python(code: str, timeout: int = 300, prefix: tuple = ()) -> subprocess.CompletedProcess:
    return subprocess.run([*prefix, sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, env=ENV)


def user_namespaces() -> bool:
    """Whether `unshare -rm` can mount a small tmpfs here (a real full disk without root)."""
    if shutil.which("unshare") is None:
        return False
    done = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"],
                          capture_output=True, timeout=30)
    return done.returncode == 0


@pytest.mark.skipif(not user_namespaces(), reason="needs `unshare -rm` to mount a 2 MiB tmpfs (a real full disk)")
def test_full_disk_during_the_data_step_says_so_and_a_rerun_recovers(tmp_path):
    """The data step on a 2 MiB disk: "disk full while writing", no half-written folder; once the disk
    is larger, the same call writes the stand-in and the doctor passes."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    script = textwrap.dedent(f"""
        import subprocess, sys
        from cggmlib.analysis import dataview
        from cggmlib.errors import ResultsError
        try:
            dataview.prepare("iemocap", "{mnt}", allow_standin=True, standin_size={IEMOCAP!r})
            print("NO ERROR")
        except ResultsError as err:
            print("ERROR", err)
        print("LEFT", sorted(p.name for p in __import__("pathlib").Path("{mnt}").iterdir()))
        subprocess.run(["mount", "-o", "remount,size=64m", "{mnt}"], check=True)
        report = dataview.prepare("iemocap", "{mnt}", allow_standin=True, standin_size={IEMOCAP!r})
        print("RERUN", report.ok)
    """)
    (tmp_path / "script.py").write_text(script)
    done = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=2m tmpfs {mnt} && "
                           f"{sys.executable} {tmp_path / 'script.py'}"], capture_output=True, text=True, timeout=300,
                          env=ENV)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ERROR disk full while writing" in done.stdout and "free space and rerun" in done.stdout
    assert "Errno 28" not in done.stdout
    assert "LEFT ['.iemocap.lock']" in done.stdout  # nothing half-written under iemocap/
    assert "RERUN True" in done.stdout


def test_a_folder_left_empty_by_a_failed_write_is_replaced_by_the_data_step(tmp_path):
    """What an interrupted writer used to leave (an empty iemocap/L/) no longer blocks every rerun."""
    (tmp_path / "iemocap" / "L").mkdir(parents=True)
    (tmp_path / "iemocap" / "A").mkdir()
    (tmp_path / "iemocap" / "A" / ".comparE.h5.k2j3h4.tmp").write_bytes(b"\0" * 100)
    report = dataview.prepare("iemocap", tmp_path, allow_standin=True, standin_size=IEMOCAP)
    assert report.ok and (tmp_path / "iemocap" / MARKER).is_file()
    assert not (tmp_path / "iemocap" / "A" / ".comparE.h5.k2j3h4.tmp").exists()


def test_a_stand_in_of_another_size_is_not_reused_without_a_word(tmp_path):
    """A data root shared by two profiles: the dryrun's full-size stand-in must not be the smoke one."""
    write_standin("mosi", tmp_path, train=30, valid=10, test=10, seq_len=8, noalign=False)
    asked = {"train": 30, "valid": 10, "test": 10, "seq_len": 8, "noalign": False}
    assert dataview.prepare("mosi", tmp_path, allow_standin=True, standin_size=asked).ok  # the same size: reused
    assert write_standin("mosi", tmp_path, reuse=True, **asked) == tmp_path / "mosi"
    bigger = asked | {"train": 1284}
    for reuse in (lambda: dataview.prepare("mosi", tmp_path, allow_standin=True, standin_size=bigger),
                  lambda: write_standin("mosi", tmp_path, reuse=True, **bigger)):
        with pytest.raises(DataError, match=r"another size .* train 30 \(asked: 1284\)") as err:
            reuse()
        assert "--force" in str(err.value) and str(tmp_path / "mosi") in str(err.value)
    # the writer's defaults count as asked: a stand-in written with its default size is reused by a bare call
    write_standin("mosi", tmp_path / "defaults", noalign=False)
    assert write_standin("mosi", tmp_path / "defaults", reuse=True, train=240, noalign=False).is_dir()
    assert dataview.prepare("mosi", tmp_path / "defaults", allow_standin=True, standin_size={"noalign": False}).ok


def test_a_killed_make_standin_does_not_block_the_next_one(tmp_path):
    """SIGKILL while `cggm make-standin iemocap` runs; the next call (no --force) writes the stand-in."""
    args = [sys.executable, "-m", "cggmlib", "make-standin", "iemocap", "--out", str(tmp_path),
            "--size", "utterances=400"]
    proc = subprocess.Popen(args, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        started = list(tmp_path.glob(".iemocap.partial-*")) + list(tmp_path.glob("iemocap/*"))
        if started:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "iemocap" / MARKER).exists()
    done = subprocess.run(args[:-2] + ["--size", "utterances=40", "--size", "folds=2"], env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "doctor: ok" in done.stdout
    assert not list(tmp_path.glob(".iemocap.partial-*"))


def test_force_recovers_a_half_written_legacy_folder_but_never_touches_foreign_files(tmp_path, capsys):
    """An unmarked folder holding only the writer's files beside a writer temporary (a writer of an
    older version, killed mid-write): refused without --force, moved aside (not deleted) with it."""
    write_standin("iemocap", tmp_path / "good", **IEMOCAP)
    half = tmp_path / "iemocap"
    (half / "L").mkdir(parents=True)
    shutil.copy(tmp_path / "good/iemocap/L/bert_large.h5", half / "L/bert_large.h5")
    (half / "A").mkdir()
    (half / "A" / ".comparE.h5.x8y7z6.tmp").write_bytes(b"\0" * 100)
    args = ["make-standin", "iemocap", "--out", str(tmp_path), "--size", "utterances=40", "--size", "folds=2"]
    assert main(args) == 2 and "--force" in capsys.readouterr().err
    assert main([*args, "--force"]) == 0 and "doctor: ok" in capsys.readouterr().out
    aside = list(tmp_path.glob("iemocap.replaced-*"))
    assert len(aside) == 1 and (aside[0] / "L/bert_large.h5").is_file()
    foreign = tmp_path / "other" / "iemocap"
    (foreign / "L").mkdir(parents=True)
    (foreign / "L" / "bert_large.h5").write_bytes(b"my real features")
    (foreign / "L" / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not a stand-in"):
        write_standin("iemocap", tmp_path / "other", overwrite=True)
    assert (foreign / "L" / "bert_large.h5").read_bytes() == b"my real features"


def test_a_second_data_step_waits_for_the_first_writer_and_uses_its_standin(tmp_path):
    """Two `reproduce` on one data root: the second starts while the first writes the stand-in."""
    waiter = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from pathlib import Path
        from cggmlib.analysis import dataview
        root = Path("{tmp_path}")
        (root / "ready").write_text("")
        while not (list(root.glob(".iemocap.partial-*")) or (root / "iemocap").exists()):
            time.sleep(0.001)
        report = dataview.prepare("iemocap", root, allow_standin=True, standin_size={{"utterances": 120}})
        print("SECOND", report.ok, flush=True)
    """)], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (tmp_path / "ready").exists() and time.time() < deadline:
        time.sleep(0.05)
    first = python(f"""
        from cggmlib.analysis import dataview
        print("FIRST", dataview.prepare("iemocap", "{tmp_path}", allow_standin=True,
                                         standin_size={{"utterances": 120}}).ok)
    """)
    out, err = waiter.communicate(timeout=300)
    assert first.returncode == 0 and "FIRST True" in first.stdout, first.stderr[-2000:]
    assert waiter.returncode == 0 and "SECOND True" in out, err[-2000:]
    assert not list(tmp_path.glob(".iemocap.partial-*"))


@pytest.fixture
def mosi_root(tmp_path):
    write_standin("mosi", tmp_path, train=40, valid=10, test=10, seq_len=10, noalign=False)
    f = tmp_path / "mosi" / "mosi_data.pkl"
    obj = pickle.loads(f.read_bytes())
    obj["train"]["audio"][7, 3, 2] = np.float32(3e38)
    f.write_bytes(pickle.dumps(obj, protocol=4))
    return tmp_path


@pytest.mark.filterwarnings("ignore:CMU-MOSI")
def test_absurd_feature_values_are_the_datas_fault_in_doctor_and_in_training(mosi_root):
    report = mosi.check(mosi_root / "mosi")
    assert not report.ok
    problem = " ".join(report.problems)
    assert "mosi_data.pkl" in problem and "train/audio" in problem and "sample 7" in problem and "1e6" in problem
    with pytest.warns(UserWarning, match="sample 7"):
        data = cg.load_data("mosi", mosi_root, batch_size=8)
    model = cg.build_model("mosi", data, "smoke")
    with pytest.raises(NumericsError) as err:
        cg.train(model, cg.make_strategy("joint"), data, cg.Config(dataset="mosi", strategy="joint", epochs=1),
                 progress=False)
    message = str(err.value)
    assert "the input data, not the learning rate or ρ" in message and "mosi_data.pkl" in message
    assert "sample 7 of the training split" in message and "'audio'" in message
    assert "Lower the learning rate" not in message


def test_lazy_non_finite_check_also_blames_the_input(mosi_root, monkeypatch):
    import cggmlib.training.optim

    monkeypatch.setattr(cggmlib.training.optim, "lazy_on", lambda device, nonfinite: nonfinite == "raise")
    with pytest.warns(UserWarning):
        data = cg.load_data("mosi", mosi_root, batch_size=8)
    with pytest.raises(NumericsError, match="checked lazily") as err:
        cg.train(cg.build_model("mosi", data, "smoke"), cg.make_strategy("joint"), data,
                 cg.Config(dataset="mosi", strategy="joint", epochs=1), progress=False)
    assert "sample 7 of the training split" in str(err.value)


@pytest.fixture(scope="module")
def food_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("food")
    food_standin.write(root / "food101", seed=0, classes=3, train=60, test=12, image_size=32)
    return root


def test_doctor_reads_every_image_header_and_full_decodes_every_image(food_root, tmp_path, capsys):
    shutil.copytree(food_root / "food101", tmp_path / "food101")
    rows = json.loads((tmp_path / "food101/train.json").read_text())
    (tmp_path / "food101" / rows[45]["img_path"]).write_bytes(b"")
    truncated = tmp_path / "food101" / rows[50]["img_path"]
    truncated.write_bytes(truncated.read_bytes()[:-400])  # the header stays readable
    report = food101.check(tmp_path / "food101")
    problems = " ".join(report.problems)
    assert "sample 45" in problems and rows[45]["id"] in problems and "sample 50" not in problems
    assert any(r["check"] == "verified" and r["value"].startswith("checked headers of 72/72 image files; decoded 0")
               for r in report.rows)
    rc = main(["doctor", "--data-root", str(tmp_path), "--dataset", "food101", "--full"])
    out = capsys.readouterr().out
    assert rc == 1 and "sample 45" in out and "sample 50" in out and "decoded 72" in out


@pytest.mark.skipif(not user_namespaces(), reason="needs `unshare -rm` to mount a small tmpfs (a real full disk)")
def test_full_disk_while_caching_food_features_says_so(food_root, tmp_path):
    """The feature files are reserved up front, so a full disk is an error, not a SIGBUS under the map."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    (tmp_path / "script.py").write_text(textwrap.dedent(f"""
        import cggmlib as cg
        from cggmlib.errors import ResultsError
        try:
            cg.load_data("food101", "{food_root}", cache_dir="{mnt}", device="cpu")
            print("NO ERROR")
        except ResultsError as err:
            print("ERROR", err)
    """))
    done = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=1m tmpfs {mnt} && "
                           f"{sys.executable} {tmp_path / 'script.py'}"], capture_output=True, text=True, timeout=300,
                          env=ENV)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"ERROR disk full while writing {mnt}" in done.stdout and "free space and rerun" in done.stdout


def _features_of(data, sample_id):
    batch = next(iter(data.train))  # one batch holds the whole split
    return batch.inputs["image"][batch.meta["id"].index(sample_id)].clone()


def test_a_changed_image_invalidates_the_feature_cache(food_root, tmp_path, capsys):
    shutil.copytree(food_root / "food101", tmp_path / "food101")
    data = cg.load_data("food101", tmp_path, batch_size=64, dev_fraction=0, shuffle=False)
    rows = json.loads((tmp_path / "food101/train.json").read_text())
    image = tmp_path / "food101" / rows[5]["img_path"]
    before = _features_of(data, rows[5]["id"])
    from PIL import Image

    Image.fromarray(np.full((32, 32, 3), 255, np.uint8)).save(image, format="JPEG")
    capsys.readouterr()
    report = food101.check(tmp_path / "food101")
    assert any("stale" in str(r["value"]) and rows[5]["img_path"] in str(r["value"]) for r in report.rows)
    data = cg.load_data("food101", tmp_path, batch_size=64, dev_fraction=0, shuffle=False)
    assert "stale" in capsys.readouterr().err
    assert not torch.equal(_features_of(data, rows[5]["id"]), before)
    image.write_bytes(b"")  # zeroed after the cache was built: never the old features
    with pytest.raises(DataError, match=f"sample 5 .*{rows[5]['id']}"):
        cg.load_data("food101", tmp_path, batch_size=64, dev_fraction=0, shuffle=False)


def _seg(path, value):
    img = nib.load(str(path))
    seg = np.asarray(img.dataobj).copy()
    seg[seg.shape[0] // 2, seg.shape[1] // 2, 0] = value
    path.write_bytes(gzip.compress(nib.Nifti1Image(seg, img.affine).to_bytes(), compresslevel=1))


def test_brats_doctor_checks_every_case_header_and_full_checks_every_label(tmp_path, capsys):
    root = tmp_path / "brats2021"
    brats_standin.write(root, seed=0, cases=24, size=160, depth=6)
    cases = sorted(p for p in root.iterdir() if p.is_dir())
    flair = cases[2] / f"{cases[2].name}_flair.nii.gz"
    flair.write_bytes(flair.read_bytes()[:-5000])  # a truncated download: the header still reads
    _seg(cases[1] / f"{cases[1].name}_seg.nii.gz", 7)
    _seg(cases[3] / f"{cases[3].name}_seg.nii.gz", 5)
    report = brats.check(root)
    problems = " ".join(report.problems)
    assert f"{cases[2].name}_flair.nii.gz is truncated" in problems and "label" not in problems
    assert any(r["check"] == "verified" and r["value"].startswith("checked headers of 120/120 files; decoded 0")
               for r in report.rows)
    rc = main(["doctor", "--data-root", str(tmp_path), "--dataset", "brats2021", "--full"])
    out = capsys.readouterr().out
    assert rc == 1 and f"{cases[1].name}_seg.nii.gz has label values [7]" in out
    assert f"{cases[3].name}_seg.nii.gz has label values [5]" in out and "cases decoded" in out


def test_brats_cache_counts_only_fresh_cases_and_rebuilds_a_changed_one(tmp_path, capsys):
    root = tmp_path / "brats2021"
    brats_standin.write(root, seed=0, cases=3, size=160, depth=6)
    cg.load_data("brats2021", tmp_path, batch_size=4)
    case = sorted(p for p in root.iterdir() if p.is_dir())[0]
    seg = case / f"{case.name}_seg.nii.gz"
    stat = seg.stat()
    _seg(seg, 2)
    os.utime(seg, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same mtime; the size may match too
    rows = {r["check"]: r["value"] for r in brats.check(root).rows}
    assert rows["preprocessed cases in cache"].startswith("2 of 3 fresh, 1 stale")
    capsys.readouterr()
    cg.load_data("brats2021", tmp_path, batch_size=4)
    assert f"stale (their source files changed since they were preprocessed, e.g. {case.name})" in \
        capsys.readouterr().err
    assert brats.check(root).rows[-2]["value"].startswith("3 of 3 fresh")


def test_caches_of_the_previous_version_are_kept_and_their_keys_completed(food_root, tmp_path, monkeypatch, capsys):
    """Recomputing the real caches costs hours: a BraTS meta with [name, size, mtime_ns] stamps and a
    Food manifest without image digests are kept when their files match, and their keys completed."""
    from cggmlib.data import brats_cache, food101_features

    root = tmp_path / "brats2021"
    brats_standin.write(root, seed=0, cases=3, size=160, depth=6)
    cg.load_data("brats2021", tmp_path, batch_size=4)
    shutil.copytree(food_root / "food101", tmp_path / "food101")
    cg.load_data("food101", tmp_path, batch_size=16)
    metas = list(root.glob("cache/*/*/meta.json"))
    manifests = list((tmp_path / "food101/features").glob("*/*.json"))
    for m in metas:
        meta = json.loads(m.read_text())
        m.write_text(json.dumps(meta | {"source": {k: v[:3] for k, v in meta["source"].items()}}))
    for m in manifests:
        m.write_text(json.dumps({k: v for k, v in json.loads(m.read_text()).items() if k != "images"}))
    assert all("unkeyed" in str(r["value"]) for r in food101.check(tmp_path / "food101").rows
               if r["check"].startswith("feature cache"))
    monkeypatch.setattr(brats_cache, "preprocess", lambda *a, **k: pytest.fail("a case was preprocessed again"))
    monkeypatch.setattr(food101_features, "_extract", lambda *a, **k: pytest.fail("features were recomputed"))
    capsys.readouterr()
    cg.load_data("brats2021", tmp_path, batch_size=4)
    cg.load_data("food101", tmp_path, batch_size=16)
    assert "predate image checksums" in capsys.readouterr().err
    assert all(len(v) == 4 for m in metas for v in json.loads(m.read_text())["source"].values())
    assert all("images" in json.loads(m.read_text()) for m in manifests)
