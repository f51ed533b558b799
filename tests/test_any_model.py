"""CGGM and every baseline on models that define no `modality_classifier` (issue: "CGGM on any model").

Each model has a sequence (B, T, D), an image (B, C, H, W) and a flat (B, D) encoder and one of four
fusions; the default classifiers copy the fused `out_layer`, so the direction term is defined.
"""
import pytest
import torch
from torch import nn

import cggmlib as cg
from cggmlib.models import FUSIONS, FusionModel
from cggmlib.modulation import STRATEGIES
from cggmlib.modulation.classifiers import DefaultClassifier

D = 8  # encoder width
INPUTS = {"seq": (5, 4), "img": (2, 6, 6), "vec": (7,)}


def encoders() -> dict[str, nn.Module]:
    return {"seq": nn.Sequential(nn.Linear(4, D), nn.ReLU()),                       # (B, 5, 4) -> (B, 5, D)
            "img": nn.Sequential(nn.Conv2d(2, D, 3, padding=1), nn.ReLU()),         # (B, 2, 6, 6) -> (B, D, 6, 6)
            "vec": nn.Sequential(nn.Linear(7, 2 * D), nn.ReLU(), nn.Linear(2 * D, D))}  # (B, 7) -> (B, D)


def tiny_data(n: int = 40, batch: int = 16, classes: int = 3) -> cg.Data:
    g = torch.Generator().manual_seed(0)
    x = {m: torch.randn(n, *shape, generator=g) for m, shape in INPUTS.items()}
    y = ((x["vec"][:, 0] > 0).long() + (x["seq"][:, 0, 0] > 0).long()) % classes
    split = lambda s, shuffle: cg.data.TensorLoader({m: v[s] for m, v in x.items()}, y[s], batch, shuffle=shuffle)
    return cg.Data("anymodel", split(slice(0, 24), True), split(slice(24, 32), False), split(slice(32, n), False),
                   task=cg.tasks.Classification(classes), input_dims=INPUTS)


#: registry names plus CGGM's paper variant; options that keep each run to a few steps
CASES = {name: {} for name in STRATEGIES} | {"cggm-paper": {"variant": "paper", "guard": True}}
OPTIONS = {"umt": {"teacher_epochs": 1}, "ume": {"teacher_epochs": 1}}


@pytest.mark.parametrize("fusion", FUSIONS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_every_strategy_trains_on_every_fusion(case, fusion, tmp_path):
    torch.manual_seed(0)
    name = case.split("-")[0]
    options = CASES[case] | OPTIONS.get(name, {})
    if name in ("umt", "ume"):
        options["teacher_dir"] = str(tmp_path)
    model = FusionModel(encoders(), {m: D for m in INPUTS}, 3, fusion=fusion, hidden=12)
    strategy = cg.make_strategy(name, **options)
    result = cg.train(model, strategy, tiny_data(), cg.Config(dataset="custom", strategy=name, epochs=2),
                      progress=False)
    steps = result.trace.steps()
    assert len(steps) == 4 and steps["loss"].notna().all()
    assert 0.0 <= result.metrics["acc"] <= 1.0
    if name == "cggm":
        heads = strategy.classifiers.heads
        assert all(isinstance(h, DefaultClassifier) for h in heads.values())
        assert all(h.out_layer.weight.shape == model.out_layer.weight.shape for h in heads.values())
        assert steps[[f"cos_weight/{m}" for m in INPUTS]].iloc[-1].notna().all()
        assert {f"coeff/{m}" for m in INPUTS} <= set(steps.columns)
        if options.get("variant") != "paper":
            assert steps["l_gm"].notna().any()  # the direction term acted (it failed at step 2 before)


class BasicMotionsLike(cg.MultimodalModel):
    """The issue's model: 1-D conv encoders on (B, 3, 100), concatenation, out_layer Linear(2·hidden, 4)."""

    def __init__(self, hidden: int = 8):
        super().__init__()
        self.encoders = nn.ModuleDict({m: nn.Sequential(nn.Conv1d(3, hidden, 5), nn.ReLU(), nn.AdaptiveAvgPool1d(1),
                                                        nn.Flatten()) for m in ("accel", "gyro")})
        self.out_layer = nn.Linear(2 * hidden, 4)

    def fuse(self, features):
        return self.out_layer(torch.cat([features[m] for m in self.encoders], -1))


@pytest.mark.parametrize("variant", ["official", "paper"])
def test_concatenation_model_from_the_issue_trains_past_the_second_step(variant):
    torch.manual_seed(0)
    x = {m: torch.randn(48, 3, 100) for m in ("accel", "gyro")}
    y = torch.randint(0, 4, (48,))
    split = lambda s: cg.data.TensorLoader({m: v[s] for m, v in x.items()}, y[s], 8, shuffle=False)
    data = cg.Data("bm", split(slice(0, 32)), split(slice(32, 40)), split(slice(40, 48)),
                   task=cg.tasks.Classification(4), input_dims={"accel": (3, 100), "gyro": (3, 100)})
    result = cg.train(BasicMotionsLike(), cg.make_strategy("cggm", variant=variant), data,
                      cg.Config(dataset="custom", strategy="cggm", epochs=2), progress=False)
    steps = result.trace.steps()
    assert len(steps) == 8
    assert steps[["cos_weight/accel", "cos_weight/gyro"]].notna().all().all()
    if variant == "official":
        assert steps["l_gm"].iloc[1:].notna().all()


class SegModel(cg.MultimodalModel):
    """Two image encoders at half resolution, a summed decoder, out_layer Conv2d(6, 4, 1) at full resolution."""

    def __init__(self):
        super().__init__()
        self.encoders = nn.ModuleDict({m: nn.Sequential(nn.Conv2d(1, 5, 3, stride=2, padding=1), nn.ReLU())
                                       for m in ("t1", "t2")})
        self.up = nn.Sequential(nn.Upsample(scale_factor=2), nn.Conv2d(5, 6, 3, padding=1), nn.ReLU())
        self.out_layer = nn.Conv2d(6, 4, 1)

    def fuse(self, features):
        return self.out_layer(self.up(sum(features.values())))


def test_default_classifiers_for_segmentation_copy_the_conv_out_layer_and_reach_label_size():
    torch.manual_seed(0)
    x = {m: torch.randn(24, 1, 8, 8) for m in ("t1", "t2")}
    y = (x["t1"][:, 0] > 0.5).long() + (x["t2"][:, 0] > 0.5).long() * 2  # labels 0..3 per pixel
    split = lambda s: cg.data.TensorLoader({m: v[s] for m, v in x.items()}, y[s], 8)
    data = cg.Data("seg", split(slice(0, 16)), split(slice(16, 24)), split(slice(16, 24)),
                   task=cg.tasks.Segmentation(), input_dims={"t1": (1, 8, 8), "t2": (1, 8, 8)})
    model = SegModel()
    strategy = cg.make_strategy("cggm", lam=0.2)
    result = cg.train(model, strategy, data, cg.Config(dataset="custom", strategy="cggm", epochs=2), progress=False)
    assert strategy.classifiers.heads["t1"].out_layer.weight.shape == model.out_layer.weight.shape
    assert strategy.classifiers.last_preds["t1"].shape == (8, 4, 8, 8)
    assert result.trace.steps()["l_gm"].notna().any()


class NoOutLayer(cg.MultimodalModel):
    def __init__(self):
        super().__init__()
        self.encoders = nn.ModuleDict({m: nn.Linear(7, D) for m in ("a", "b")})
        self.head = nn.Linear(2 * D, 3)

    def fuse(self, features):
        return self.head(torch.cat(list(features.values()), -1))


class VideoFeatures(FusionModel):
    """Encoder 'clip' returns (B, C, T, H, W), which the default classifier cannot pool."""

    def __init__(self):
        super().__init__({"clip": nn.Conv3d(1, D, 1), "vec": nn.Linear(7, D)}, {"clip": D, "vec": D}, 3, "sum")

    def fuse(self, features):
        return self.out_layer(features["clip"].mean((2, 3, 4)) + features["vec"])


class WrongHeads(FusionModel):
    """modality_classifier(m) ends in Linear(D, 3), but the fused out_layer is Linear(12, 3)."""

    def __init__(self):
        super().__init__({m: nn.Linear(7, D) for m in ("a", "b")}, {"a": D, "b": D}, 3, "concat", hidden=12)

    def modality_classifier(self, modality):
        head = nn.Sequential()
        head.out_layer = nn.Linear(D, 3)
        head.forward = head.out_layer.forward
        return head


def flat_data(modalities, shapes=None) -> cg.Data:
    shapes = shapes or {m: (7,) for m in modalities}
    x = {m: torch.randn(16, *shapes[m]) for m in modalities}
    loader = cg.data.TensorLoader(x, torch.randint(0, 3, (16,)), 8)
    return cg.Data("bad", loader, loader, loader, task=cg.tasks.Classification(3), input_dims=shapes)


@pytest.mark.parametrize("model, data, message", [
    (NoOutLayer, ("a", "b"), r"modalities \['a', 'b'\].*no fused output layer.*model.out_layer.*modality_classifier"),
    (VideoFeatures, ("clip", "vec"), r"modality 'clip': features of shape \(8, 8, 1, 4, 4\).*modality_classifier\('clip'\)"),
    (WrongHeads, ("a", "b"), r"modality 'a': the classifier's out_layer weight is \(3, 8\), the fused .* \(3, 12\)"),
])
def test_a_model_cggm_cannot_serve_fails_at_setup_naming_the_modality_and_the_fix(model, data, message):
    shapes = {"clip": (1, 1, 4, 4), "vec": (7,)} if model is VideoFeatures else None
    data, model = flat_data(data, shapes), model()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(cg.ConfigError, match=message):
        cg.make_strategy("cggm").setup(model, data)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_own_loop_without_data_checks_the_heads_before_the_first_update():
    model, batch_data = WrongHeads(), flat_data(("a", "b"))
    strategy = cg.make_strategy("cggm")
    strategy.setup(model, batch_data.task)  # only the task: no batch to check at setup
    batch = next(iter(batch_data.train))
    out = model(batch.inputs)
    strategy.loss(model, batch, out, epoch=0).backward()
    with pytest.raises(cg.ConfigError, match=r"modality 'a': .*out_layer"):
        strategy.after_backward(model, batch, out, epoch=0)  # before optimizer.step()


class WrongOutputs(WrongHeads):
    """modality_classifier(m) returns 5 outputs; the task has 3 classes."""

    def modality_classifier(self, modality):
        head = nn.Sequential()
        head.out_layer = nn.Linear(D, 5)
        head.forward = head.out_layer.forward
        return head


@pytest.mark.parametrize("lam", [0.2, 0.0])
def test_own_heads_with_the_wrong_output_shape_fail_at_setup_also_with_lam_zero(lam):
    model, data = WrongOutputs(), flat_data(("a", "b"))
    with pytest.raises(cg.ConfigError, match=r"modality 'a': the classifier returns shape \(8, 5\).*needs \(8, 3\)"):
        cg.make_strategy("cggm", lam=lam).setup(model, data)


def test_lam_zero_keeps_accepting_own_heads_of_another_shape():
    model = WrongHeads()
    strategy = cg.make_strategy("cggm", lam=0.0)
    result = cg.train(model, strategy, flat_data(("a", "b")), cg.Config(dataset="custom", strategy="cggm", epochs=1),
                      progress=False)
    assert strategy.classifiers.heads["a"].out_layer.weight.shape == (3, D)
    assert len(result.trace.steps()) == 2
