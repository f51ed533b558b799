"""`cggm bench`: step time and peak memory of joint training, CGGM and every baseline, side by side.

Each measurement builds the real thing (the dataset's model, the strategy, the loop's `train_step`
with its optimizer, clipping, gradient-norm logging and trace) on random inputs of the dataset's
shapes, and times a pair (joint and one strategy; CGGM rows add its classifiers alone) in one
process, alternating the order every repetition; medians are reported. The classifiers alone are
`ModalityClassifiers.observe` + `step` on the same detached features: the work CGGM cannot avoid.

    overhead_vs_heads = (step of CGGM − step of joint) / (step of the classifiers alone)
    vs_joint = step of the strategy / step of joint

both from per-repetition pairs (cggmlib/bench/suites.py `result_row`). 1.0 overhead_vs_heads means CGGM
adds nothing beyond its classifiers' own compute. `peak_mb`: on CUDA the allocator's
peak during one step; on CPU the tensors alive at the start of the step (weights, gradients,
optimizer and strategy state) plus the highest running total of the step's allocations (profiler
memory events). `extra_mb` = peak of the row − peak of joint training. Sizes: `reduced` (paper
architectures with shorter sequences or smaller backbones, for CPU) and `paper` (the paper's sizes,
for a GPU: cggmlib/bench/gpu_check.py). Suites are in cggmlib/bench/suites.py.
"""
from __future__ import annotations

import copy
import statistics
import time
from dataclasses import dataclass, field

import torch

from ..config import Config
from ..data.base import Batch, Data, TensorLoader
from ..models import build_model
from ..models.base import fused_output_layer
from ..presets import REGISTRY
from ..modulation import make_strategy
from ..modulation.classifiers import ModalityClassifiers, PooledLinear
from ..tasks import Classification, Regression, Segmentation
from ..train import train_step
from ..training.optim import step_tools
from ..training.trace import Trace

BRATS = ("flair", "t1ce", "t1", "t2")


@dataclass(frozen=True)
class Case:
    """One model on inputs of one dataset's shapes: per-sample shape of each modality, task, batch."""

    dataset: str
    shapes: dict
    task: object
    batch_size: int
    preset: str = "paper"
    model_kwargs: dict = field(default_factory=dict)

    @property
    def input_dims(self) -> dict:
        return {m: (s if self.task.kind == "segmentation" else s[-1]) for m, s in self.shapes.items()}


def _seq(**lengths_dims) -> dict:
    return {m: tuple(v) for m, v in lengths_dims.items()}


_TINY_DEEPLAB = {"arch": "deeplab", "deeplab": dict(depth=101, width=8, blocks=(1, 1, 1), output_stride=16,
                                                    aspp_channels=32, aspp_dilations=(1, 2, 4, 6),
                                                    decoder_channels=32)}
def paper_case(dataset: str, batch_size: int | None = None, **shorter) -> Case:
    """`dataset`'s model on inputs of its real shapes (the registry's), at its paper batch size unless given;
    `shorter` (modality=length) shortens a sequence (the CPU's reduced size)."""
    facts = REGISTRY[dataset]
    shapes = {m: (shorter.get(m, s[0]), *s[1:]) for m, s in facts.shapes.items()}
    return Case(dataset, shapes, facts.new_task(), batch_size or facts.train["paper"]["batch_size"])


#: size -> model -> Case. paper: the paper's shapes and batch sizes (dataset facts: cggmlib/presets.py);
#: reduced: the paper's transformer widths and depths with shorter sequences and batches, a narrow
#: one-block-per-stage DeepLab; smoke: the smoke presets' models on tiny inputs (tests, a quick look).
CASES = {
    "smoke": {
        "mosi": Case("mosi", _seq(text=(8, 30), audio=(8, 5), vision=(8, 20)), Regression(), 8, "smoke"),
        "iemocap": Case("iemocap", _seq(text=(6, 64), audio=(8, 13), vision=(8, 34)), Classification(4), 8, "smoke"),
        "food101": Case("food101", _seq(image=(8, 48), text=(6, 48)), Classification(101), 8, "smoke"),
        "brats2021": Case("brats2021", {m: (1, 32, 32) for m in BRATS}, Segmentation(), 2, "smoke"),
    },
    "reduced": {
        "mosi": paper_case("mosi"),
        "iemocap": paper_case("iemocap", 32, audio=50),
        "food101": paper_case("food101", 32, image=50, text=40),
        "brats2021": Case("brats2021", {m: (1, 96, 96) for m in BRATS}, Segmentation(), 4, "paper", _TINY_DEEPLAB),
    },
    "paper": {
        **{d: paper_case(d) for d in ("mosi", "iemocap", "food101")},
        # 16 slices: the preset's 64 four-encoder ResNet-101 slices are priced by the cost table instead
        "brats2021": paper_case("brats2021", 16),
    },
}


def synthetic_case(num_modalities: int, batch_size: int = 256, dim: int = 256) -> Case:
    """The `synthetic` late-fusion MLP with M vector modalities (for cost against M)."""
    return Case("synthetic", {f"m{k}": (dim,) for k in range(num_modalities)}, Classification(10), batch_size,
                "paper", {"hidden": 256, "feature_dim": 128})


def make_batch(case: Case, device, seed: int = 0, batch_size: int | None = None):
    """Random inputs of the case's shapes and matching targets, on `device`."""
    n, g = batch_size or case.batch_size, torch.Generator().manual_seed(seed)
    inputs = {m: torch.randn(n, *s, generator=g) for m, s in case.shapes.items()}
    if case.task.kind == "regression":
        target = torch.empty(n).uniform_(-3, 3, generator=g)
    elif case.task.kind == "segmentation":
        target = torch.randint(0, case.task.num_classes, (n, *next(iter(case.shapes.values()))[1:]), generator=g)
    else:
        target = torch.randint(0, case.task.num_classes, (n,), generator=g)
    return Batch(inputs, target).to(device)


def make_data(case: Case, batch) -> Data:
    """A `Data` whose splits hold the benchmark batch (strategies that read data.train in setup get it)."""
    cpu = batch.to("cpu")
    loader = TensorLoader(cpu.inputs, cpu.target, len(cpu))
    return Data(case.dataset, loader, loader, loader, case.task, case.input_dims, standin=True,
                info={"source": "random inputs for cggm bench"})


def pooled_classifiers(model, inputs: dict, num_outputs: int) -> dict:
    """The lighter classifier f_m: mean over positions and one Linear (`PooledLinear`) for sequences; a
    1×1 conv, ReLU and a 1×1 `out_layer` for feature maps (no decoder). Output layers keep the fused
    layer's shape, so the direction term still compares them."""
    width = fused_output_layer(model).weight.shape[1]
    with torch.no_grad():
        was = model.training
        model.eval()
        device = next(model.parameters()).device
        feats = model({m: x[:2].to(device) for m, x in inputs.items()}).features
        model.train(was)
    return {m: (_PooledMap(f.shape[1], width, num_outputs) if f.dim() == 4
                else PooledLinear(f.shape[-1], num_outputs)).to(device) for m, f in feats.items()}


class _PooledMap(torch.nn.Module):
    """Feature map → 1×1 conv → ReLU → 1×1 `out_layer`, upsampled ×4 to the label size (BraTS)."""

    def __init__(self, channels: int, width: int, num_outputs: int):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Conv2d(channels, width, 1), torch.nn.ReLU())
        self.out_layer = torch.nn.Conv2d(width, num_outputs, 1)

    def forward(self, feature):
        return torch.nn.functional.interpolate(self.out_layer(self.body(feature)), scale_factor=4, mode="bilinear")


class Runner:
    """A model, a strategy and the loop's step tools; `step(batch)` is one real training step."""

    def __init__(self, case: Case, strategy: str, device, options: dict | None = None, amp: str = "off",
                 grad_norms: bool = True, seed: int = 0, batch=None, light: bool = False):
        options = dict(options or {})
        torch.manual_seed(seed)
        self.batch = batch if batch is not None else make_batch(case, device)
        data = make_data(case, self.batch)
        self.model = build_model(case.dataset, data, case.preset, **case.model_kwargs).to(device)
        cfg = Config(dataset=case.dataset, strategy=strategy, preset=case.preset, device=str(device), amp=amp,
                     strategy_kwargs=options)
        kwargs = dict(cfg.strategy_kwargs)
        if light:
            kwargs["classifiers_override"] = pooled_classifiers(self.model, self.batch.inputs, case.task.num_outputs)
        self.strategy = make_strategy(strategy, **kwargs)
        self.strategy.setup(self.model, data)
        self.strategy.on_epoch_start(self.model, data, 0)
        self.tools = step_tools(cfg, self.model, self.strategy, torch.device(device), grad_norms=grad_norms)
        self.trace, self.steps = Trace(), 0
        self.model.train()

    def step(self, batch=None) -> None:
        row = train_step(self.model, self.strategy, batch or self.batch, 0, self.tools, self.steps)
        self.trace.log(step=self.steps, epoch=0, lr=self.tools.optimizer.param_groups[0]["lr"], **row)
        self.steps += 1


class HeadsRunner:
    """The CGGM classifiers alone: forward, backward and step on fixed detached features."""

    def __init__(self, runner: Runner):
        strategy = runner.strategy
        heads = {m: copy.deepcopy(h) for m, h in strategy.classifiers.heads.items()}
        self.classifiers = ModalityClassifiers.for_strategy(strategy, runner.model, heads=heads)
        self.batch = runner.batch
        with torch.no_grad():
            self.features = {m: f.detach() for m, f in runner.model(self.batch.inputs).features.items()}

    def step(self, batch=None) -> None:
        self.classifiers.observe(self.features, self.batch.target)
        self.classifiers.step()


def sync(device) -> None:
    """Wait for the device to finish its queued work (CUDA only), so a timer reads the real time."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(runners: dict, reps: int, warmup: int = 2, device="cpu") -> dict[str, list[float]]:
    """Seconds per step of each runner; the order rotates every repetition (no position bias)."""
    names = list(runners)
    for _ in range(warmup):
        for n in names:
            runners[n].step()
    sync(device)
    times = {n: [] for n in names}
    for k in range(reps):
        for n in names[k % len(names):] + names[:k % len(names)]:
            sync(device)
            start = time.perf_counter()
            runners[n].step()
            sync(device)
            times[n].append(time.perf_counter() - start)
    return times


def peak_mb(runner, device) -> float:
    """Peak memory of one step in MiB (see the module docstring for what is counted on CPU)."""
    if torch.device(device).type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        runner.step()
        sync(device)
        return torch.cuda.max_memory_allocated(device) / 2**20
    from torch.profiler import ProfilerActivity, profile

    if getattr(getattr(runner, "strategy", None), "_overlap", None) is not None:
        return float("nan")  # the profiler sees the calling thread only, not CGGM's worker thread
    live = live_bytes(runner)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        runner.step()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU)
    running = top = 0
    for _, nbytes in events:
        running += nbytes
        top = max(top, running)
    return (live + top) / 2**20


def live_bytes(runner) -> int:
    """Bytes of the distinct tensor storages a runner keeps between steps."""
    seen, total = set(), 0

    def visit(obj):
        nonlocal total
        if torch.is_tensor(obj):
            for t in (obj, obj.grad) if obj.grad is not None else (obj,):
                ptr = t.untyped_storage().data_ptr()
                if ptr not in seen:
                    seen.add(ptr)
                    total += t.untyped_storage().nbytes()
        elif isinstance(obj, dict):
            for v in obj.values():
                visit(v)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                visit(v)

    if isinstance(runner, HeadsRunner):
        visit(list(runner.classifiers.parameters()))
        visit(runner.classifiers.optimizer.state_dict()["state"])
        visit(runner.features)
        return total
    visit(list(runner.model.parameters()) + list(runner.model.buffers()))
    visit(runner.tools.optimizer.state_dict()["state"])
    visit(runner.strategy.state_dict())
    classifiers = getattr(runner.strategy, "classifiers", None)
    if classifiers is not None:
        visit(list(classifiers.parameters()))
    return total


def median_ms(times: list[float]) -> float:
    return 1000 * statistics.median(times)
