"""Performance paths: `cggm bench` output and ratios, CPU peak memory, the classifiers alone, CGGM's
overlap giving identical results, no host reads in a step, and the lazy non-finite check."""
import json
import subprocess
import sys

import pytest
import torch

import cggmlib as cg
from cggmlib.bench import runner as B
from cggmlib.bench.suites import fit_line, result_row
from cggmlib.bench.report import line


def test_cli_writes_one_parsable_line_per_measurement_and_the_tables(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "cggmlib", "bench", "--size", "smoke", "--suite", "strategies",
                           "batch", "--models", "mosi", "--reps", "1", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = [dict(kv.split("=", 1) for kv in ln.split()) for ln in proc.stdout.splitlines() if ln.startswith("suite=")]
    saved = [json.loads(x) for x in (tmp_path / "bench.jsonl").read_text().splitlines()]
    assert len(rows) == len(saved) and len(rows) >= len(cg.STRATEGIES) + 3 + 5
    strategies = {r["strategy"] for r in rows if r["suite"] == "strategies"}
    assert strategies == set(cg.STRATEGIES)  # every baseline measured (pmr: a clear error on regression)
    errors = {r["strategy"] for r in rows if "error" in r}
    assert errors <= {"pmr"}, errors
    for r in rows:
        if "error" not in r:
            assert float(r["step_ms"]) > 0 and float(r["vs_joint"]) > 0
    official = next(r for r in rows if r["strategy"] == "cggm" and r["variant"] == "official" and r["suite"] == "strategies")
    assert {"heads_ms", "overhead_vs_heads", "peak_mb", "extra_mb"} <= set(official)
    table = (tmp_path / "bench.md").read_text()
    assert "| mosi | cpu | 8 | cggm | official |" in table and "| batch | joint ms |" in table


def test_ratios_are_computed_from_medians():
    times = {"joint": [0.10, 0.30, 0.11], "arm": [0.15, 0.16, 0.9], "heads": [0.04, 0.05, 0.06]}
    row = result_row("m", "smoke", "cpu", 8, "cggm", "official", times, heads_key="heads", peaks={"joint": 10.0, "arm": 12.5})
    assert row["step_ms"] == pytest.approx(160) and row["joint_ms"] == pytest.approx(110)
    # per-repetition pairs: ratios 1.5, 0.53, 8.2 and differences 50, −140, 790 ms
    assert row["vs_joint"] == pytest.approx(1.5)
    assert row["overhead_vs_heads"] == pytest.approx(50 / 50)
    assert row["extra_mb"] == pytest.approx(2.5)
    assert line({"model": "m", "step_ms": 41.234, "vs_joint": 1.3123}) == "model=m step_ms=41.2 vs_joint=1.31"


def test_fit_line_recovers_a_line():
    slope, intercept, r2 = fit_line([2, 3, 4, 5], [1.5, 2.0, 2.5, 3.0])
    assert (slope, intercept, r2) == pytest.approx((0.5, 0.5, 1.0))


def test_cpu_peak_memory_counts_the_classifiers_state():
    torch.manual_seed(0)
    case = B.CASES["smoke"]["mosi"]
    joint = B.Runner(case, "joint", "cpu")
    cggm = B.Runner(case, "cggm", "cpu", batch=joint.batch)
    for r in (joint, cggm):
        r.step()
    heads = cggm.strategy.classifiers
    # parameters, gradients and Adam's two moments of every f_m: at least 4 × their parameter bytes
    floor = 4 * sum(p.numel() * p.element_size() for p in heads.parameters()) / 2**20
    joint_mb = B.peak_mb(joint, "cpu")
    assert B.peak_mb(cggm, "cpu") - joint_mb >= 0.9 * floor
    assert joint_mb > sum(p.numel() * 4 for p in joint.model.parameters()) / 2**20


def test_classifiers_alone_train_only_the_classifiers():
    case = B.CASES["smoke"]["iemocap"]
    runner = B.Runner(case, "cggm", "cpu")
    model_before = {k: v.clone() for k, v in runner.model.state_dict().items()}
    alone = B.HeadsRunner(runner)
    heads_before = [p.detach().clone() for p in alone.classifiers.parameters()]
    alone.step()
    assert all(torch.equal(v, runner.model.state_dict()[k]) for k, v in model_before.items())
    assert any(not torch.equal(a, b) for a, b in zip(heads_before, alone.classifiers.parameters()))


def _train(strategy_kwargs, data_kwargs=None, epochs=2):
    data = cg.load_data("synthetic", num_samples=400, batch_size=32, **(data_kwargs or {}))
    cfg = cg.Config(dataset="synthetic", strategy="cggm", epochs=epochs, seed=3)
    torch.manual_seed(0)
    model = cg.build_model("synthetic", data)
    return cg.train(model, cg.make_strategy("cggm", **strategy_kwargs), data, cfg, progress=False), model


def test_overlapped_classifiers_give_identical_results():
    (a, model_a), (b, model_b) = _train({}), _train({"overlap": True})
    assert a.metrics == b.metrics
    assert a.trace.frame().equals(b.trace.frame())
    assert all(torch.equal(p, q) for p, q in zip(model_a.parameters(), model_b.parameters()))


HOST_READS = ("item", "tolist", "__bool__", "__float__", "__int__", "cpu", "numpy")


def test_a_cggm_step_reads_nothing_on_the_host(monkeypatch):
    """On a GPU each of these would wait for the device; cggmlib's step code calls none of them."""
    import cggmlib.training.optim

    monkeypatch.setattr(cggmlib.training.optim, "lazy_on", lambda device, nonfinite: True)
    runner = B.Runner(B.CASES["smoke"]["mosi"], "cggm", "cpu")
    runner.trace.flush_every = 10**9  # the trace reads its values in batches, outside the step
    calls = []
    for name in HOST_READS:
        original = getattr(torch.Tensor, name)

        def spy(self, *args, _original=original, _name=name, **kwargs):
            caller = sys._getframe(1).f_globals.get("__name__", "")
            if caller.startswith("cggmlib"):
                calls.append((_name, caller, sys._getframe(1).f_lineno))
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, spy)
    for _ in range(4):
        runner.step()
    monkeypatch.undo()
    assert calls == []


def test_lazy_check_still_names_the_first_bad_step(monkeypatch):
    import cggmlib.training.optim

    monkeypatch.setattr(cggmlib.training.optim, "lazy_on", lambda device, nonfinite: nonfinite == "raise")
    data = cg.load_data("synthetic", num_samples=300, batch_size=32)
    data.train.inputs["m1"][40:50] = float("nan")  # the second batch of the first epoch
    data.train.shuffle = False
    model = cg.build_model("synthetic", data)
    with pytest.raises(cg.NumericsError, match="checked lazily") as err:
        cg.train(model, cg.make_strategy("cggm"), data, cg.Config(dataset="synthetic", strategy="cggm", epochs=1),
                 progress=False)
    message = str(err.value)
    assert "step 1 " in message and "m1" in message and "coefficients" in message


def test_prepared_gpu_script_runs_its_sections_on_cpu(tmp_path):
    """`python -m cggmlib.bench.gpu_check --cpu-dry-run` walks every section with the smoke sizes (no GPU here)."""
    proc = subprocess.run([sys.executable, "-m", "cggmlib.bench.gpu_check", "--cpu-dry-run", "--reps", "1", "--models",
                           "mosi", "--strategies", "ogm", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(x) for x in (tmp_path / "gpu_check.jsonl").read_text().splitlines()]
    suites = {r["suite"] for r in rows}
    assert {"strategies", "strategies_bf16", "amp_train"} <= suites and "failed" not in suites
    assert all(r["finite"] for r in rows if r["suite"] == "amp_train")
    assert (tmp_path / "gpu_check.md").exists()


def test_cuda_batches_are_pinned_ahead_in_order_and_errors_reach_the_loop(monkeypatch):
    """cggmlib/device.py's CUDA path, with pinning and the copy replaced (no GPU here)."""
    from cggmlib.data.base import Batch
    from cggmlib.device import device_batches

    pinned = []
    monkeypatch.setattr(Batch, "pin_memory", lambda self: pinned.append(int(self.target[0])) or self)
    monkeypatch.setattr(Batch, "to", lambda self, device, non_blocking=False: self)
    loader = cg.data.TensorLoader({"a": torch.arange(10.0)[:, None]}, torch.arange(10), batch_size=3)
    cuda = torch.device("cuda")
    assert [int(b.target[0]) for b in device_batches(loader, cuda)] == [0, 3, 6, 9] == pinned

    def broken():
        yield next(iter(loader))
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        list(device_batches(broken(), cuda))
    import threading

    before = threading.active_count()
    for _ in device_batches(loader, cuda):  # leaving early stops the producer thread
        break
    assert threading.active_count() == before


def test_released_suite_prints_ours_against_the_transcription_of_the_released_step(tmp_path):
    doc = tmp_path / "perf.md"
    doc.write_text("intro\n<!-- mosi:begin -->\nold numbers\n<!-- mosi:end -->\nafter\n")
    proc = subprocess.run([sys.executable, "-m", "cggmlib", "bench", "--size", "smoke", "--suite", "released",
                           "--models", "mosi", "--reps", "1", "--out", str(tmp_path), "--docs", str(doc), "mosi"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = [dict(kv.split("=", 1) for kv in ln.split()) for ln in proc.stdout.splitlines() if ln.startswith("suite=")]
    assert [r["variant"] for r in rows] == ["joint", "cggm", "forward", "forward_backward", "classifiers", "optimizer"]
    for r in rows:
        assert r["model"] == "mosi" and float(r["released_ms"]) > 0 and float(r["exact_ms"]) > 0
        assert float(r["vs_released"]) > 0 and float(r["exact_vs_released"]) > 0 and float(r["vs_exact"]) > 0
    table = (tmp_path / "bench.md").read_text()
    assert "| ours / released | exact / released | ours / exact |" in table and "| mosi | smoke | cpu | 1 | 8 | cggm |" in table
    # --docs: the same tables, with the command that made them, replace the marked block of a Markdown page
    page = doc.read_text()
    assert "old numbers" not in page and page.startswith("intro\n") and page.endswith("after\n")
    assert "*Written by `cggm bench --suite released --size smoke --models mosi --reps 1 --threads 1`" in page
    assert "| mosi | smoke | cpu | 1 | 8 | cggm |" in page


def test_released_suite_refuses_a_model_it_does_not_time(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "cggmlib", "bench", "--size", "smoke", "--suite", "released",
                           "--models", "brats2021", "--out", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "mosi, iemocap and food101" in proc.stderr and "brats2021" in proc.stderr


def test_transcribed_released_step_trains_with_the_sizes_of_our_model():
    from cggmlib.bench.released import ReleasedStep, released_sizes

    case = B.CASES["smoke"]["mosi"]
    ours = B.Runner(case, "joint", "cpu")
    sizes = released_sizes(ours.model)
    assert sizes["input_dims"] == [s[-1] for s in case.shapes.values()] and sizes["num_outputs"] == 1
    rel = ReleasedStep(sizes, ours.batch, regression=True, cggm=True)
    ours_params = sum(p.numel() for p in ours.model.parameters())
    assert sum(p.numel() for p in rel.model.parameters()) == ours_params  # the same architecture
    before = [p.detach().clone() for p in rel.model.parameters()]
    rel.step()
    rel.step()
    assert rel.l_gm is not None and all(not torch.equal(a, p) for a, p in zip(before, rel.model.parameters()))
