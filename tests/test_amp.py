"""Mixed precision in the loop (cggmlib/training/optim.py `amp_setup`): bf16 autocast, fp16 with a GradScaler
whose gradients are unscaled before CGGM modulates them, overflow steps skipped, classifiers in float32."""
from contextlib import nullcontext

import pytest
import torch

import cggmlib as cg
from cggmlib.bench import runner as B
from cggmlib.training.optim import amp_setup

CPU = torch.device("cpu")


def test_amp_modes_on_cpu():
    assert amp_setup("off", CPU) == (nullcontext, None)
    assert amp_setup("auto", CPU) == (nullcontext, None)  # CPU autocast is opt-in
    autocast, scaler = amp_setup("bf16", CPU)
    assert scaler is None and autocast().fast_dtype == torch.bfloat16
    autocast, scaler = amp_setup("fp16", CPU)
    assert isinstance(scaler, torch.amp.GradScaler) and autocast().fast_dtype == torch.float16


def test_bf16_training_runs_and_classifiers_stay_float32():
    data = cg.load_data("synthetic", num_samples=300, batch_size=32)
    model = cg.build_model("synthetic", data)
    strategy = cg.make_strategy("cggm")
    dtypes = {}
    cfg = cg.Config(dataset="synthetic", strategy="cggm", epochs=1, amp="bf16")
    strategy_setup = strategy.setup

    def record(name):
        def hook(module, inputs, output):  # training steps only (evaluation runs in float32)
            if module.training:
                dtypes[name] = output.dtype
        return hook

    def setup(model, data):
        strategy_setup(model, data)
        for m, head in strategy.classifiers.heads.items():
            head.register_forward_hook(record(m))
        model.out_layer.register_forward_hook(record("fused"))

    strategy.setup = setup
    result = cg.train(model, strategy, data, cfg, progress=False)
    steps = result.trace.steps()
    assert torch.isfinite(torch.tensor(steps["loss"].to_numpy())).all()
    assert dtypes.pop("fused") == torch.bfloat16
    assert set(dtypes.values()) == {torch.float32}


def _runner(amp):
    torch.manual_seed(0)
    return B.Runner(B.synthetic_case(3, batch_size=64, dim=32), "cggm", "cpu", amp=amp)


def test_fp16_modulation_acts_on_unscaled_gradients():
    rows = {}
    for amp in ("off", "fp16"):
        runner = _runner(amp)
        runner.step()
        rows[amp] = runner.trace.steps().iloc[0]
    assert _runner("fp16").tools.scaler.get_scale() == 2.0**16
    for m in ("m0", "m1", "m2"):  # a scaled gradient would be 65536 times larger
        assert rows["fp16"][f"grad_norm/{m}"] == pytest.approx(rows["off"][f"grad_norm/{m}"], rel=0.05)
        # and the applied coefficient is exactly what scaled it
        ratio = rows["fp16"][f"grad_norm_mod/{m}"] / rows["fp16"][f"grad_norm/{m}"]
        assert ratio == pytest.approx(abs(rows["fp16"][f"coeff/{m}"]), rel=1e-4)


def test_fp16_overflow_is_skipped_by_the_scaler_not_an_error():
    runner = _runner("fp16")
    runner.tools.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**40)  # certain to overflow in fp16
    before = [p.detach().clone() for p in runner.model.parameters()]
    runner.step()  # nonfinite="raise": an overflow is the scaler's business, not a NumericsError
    assert all(torch.equal(a, b) for a, b in zip(before, runner.model.parameters()))
    assert runner.tools.scaler.get_scale() < 2.0**40
    assert runner.tools.finite.skipped == 0
