"""The paper's four models: shapes, the encoder contract CGGM relies on, presets, and one epoch of
joint training and CGGM on each paper dataset's stand-in (written in the real on-disk format)."""
import importlib.util
import warnings

import pytest
import torch

import cggmlib as cg
from cggmlib import metrics as M
from cggmlib.data import Data, TensorLoader
from cggmlib.models import build_model
from cggmlib.modulation import make_strategy
from cggmlib.tasks import Classification, Regression, Segmentation

BRATS = ("flair", "t1ce", "t1", "t2")
#: dataset -> (input_dims as the loaders give them, one sample's input shapes, task)
SHAPES = {
    "mosi": ({"text": 300, "audio": 5, "vision": 20}, {"text": (50, 300), "audio": (50, 5), "vision": (50, 20)},
             Regression()),
    "iemocap": ({"text": 1024, "audio": 130, "vision": 342},
                {"text": (22, 1024), "audio": (37, 130), "vision": (50, 342)}, Classification(4)),
    "food101": ({"image": 32, "text": 32}, {"image": (197, 32), "text": (50, 32)}, Classification(101)),
    "brats2021": ({m: (1, 160, 160) for m in BRATS}, {m: (1, 32, 32) for m in BRATS}, Segmentation()),
}


def tiny_data(name: str, n: int = 4) -> Data:
    dims, shapes, task = SHAPES[name]
    g = torch.Generator().manual_seed(0)
    inputs = {m: torch.randn(n, *s, generator=g) for m, s in shapes.items()}
    if task.kind == "regression":
        target = torch.empty(n).uniform_(-3, 3, generator=g)
    elif task.kind == "segmentation":
        target = torch.randint(0, 4, (n, *shapes["flair"][1:]), generator=g)
    else:
        target = torch.randint(0, task.num_classes, (n,), generator=g)
    loader = TensorLoader(inputs, target, batch_size=n)
    return Data(name, loader, loader, loader, task, dims)


def expected_logits(name: str, n: int) -> tuple:
    return {"mosi": (n, 1), "iemocap": (n, 4), "food101": (n, 101), "brats2021": (n, 4, 32, 32)}[name]


MODEL_CASES = [("mosi", "smoke", {}), ("iemocap", "smoke", {}), ("food101", "smoke", {}),
               ("mosi", "paper", {}), ("iemocap", "paper", {"mask_padding": True}), ("food101", "paper", {}),
               ("brats2021", "smoke", {}), ("brats2021", "smoke", {"arch": "deeplab"}),
               ("brats2021", "paper", {"arch": "unet"})]


@pytest.mark.parametrize("name,preset,kwargs", MODEL_CASES)
def test_forward_backward_shapes_and_classifiers(name, preset, kwargs):
    torch.manual_seed(0)
    data = tiny_data(name)
    model = build_model(name, data, preset, **kwargs)
    batch = next(iter(data.train))
    out = model(batch.inputs)
    assert tuple(out.logits.shape) == expected_logits(name, len(batch))
    assert list(out.features) == list(model.encoders)
    data.task.loss(out.logits, batch.target).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    for m, f in out.features.items():
        clf = model.modality_classifier(m)
        assert clf.out_layer.weight.shape == model.out_layer.weight.shape
        z = clf(f.detach())
        assert z.shape == out.logits.shape
        data.task.loss(z, batch.target).backward()


@pytest.mark.parametrize("name,preset,kwargs", MODEL_CASES)
def test_every_modality_specific_parameter_sits_in_its_encoder(name, preset, kwargs):
    """features[m] depends on exactly encoders[m]'s parameters (input projections included)."""
    torch.manual_seed(0)
    data = tiny_data(name)
    model = build_model(name, data, preset, **kwargs)
    batch = next(iter(data.train))
    for m in model.encoders:
        model.zero_grad(set_to_none=True)
        model.encode(batch.inputs)[m].sum().backward()
        used = {id(p) for p in model.parameters() if p.grad is not None}
        assert used == {id(p) for p in model.encoders[m].parameters()}, m
    in_encoders = {id(p): p.numel() for e in model.encoders.values() for p in e.parameters()}  # shared counted once
    fusion = [p for n, p in model.named_parameters() if not n.startswith("encoders.")]
    assert sum(in_encoders.values()) + sum(p.numel() for p in fusion) == sum(p.numel() for p in model.parameters())
    assert any(p is model.out_layer.weight for p in fusion)


@pytest.mark.parametrize("name", ["mosi", "iemocap", "food101", "brats2021"])
def test_fuse_accepts_zeroed_modalities(name):
    """Baselines feed the fusion a subset of modalities by zeroing the others' features."""
    torch.manual_seed(0)
    data = tiny_data(name)
    model = build_model(name, data, "smoke").eval()
    batch = next(iter(data.train))
    with torch.no_grad():
        feats = model.encode(batch.inputs)
        for keep in model.encoders:
            only = {m: f if m == keep else torch.zeros_like(f) for m, f in feats.items()}
            z = model.fuse(only)
            assert z.shape == expected_logits(name, len(batch)) and torch.isfinite(z).all()


def test_paper_transformer_sizes_match_the_official_architecture():
    """Parameter counts of the official MSAModel/FoodModel, counted by hand from their layers."""
    layer = 3 * 40 * 40 + 3 * 40 + 40 * 40 + 40 + 2 * (40 * 160) + 160 + 40 + 2 * 2 * 40  # attn, fc1, fc2, 2 LN
    encoder = lambda n: n * layer + 2 * 40  # noqa: E731  (+ final LayerNorm)
    head = 2 * (40 * 40 + 40)  # proj1, proj2
    expect = {
        "mosi": 40 * (301 + 6 + 21) + 3 * encoder(5) + encoder(3) + head + 41,
        "iemocap": 40 * (1025 + 131 + 343) + 3 * encoder(4) + encoder(2) + head + 41 * 4,
        # official FoodModel: 768-d inputs, one projection `projv` for both (plus an unused `projt`,
        # 30,760, that our count leaves out)
        "food101": 40 * 769 + 2 * encoder(4) + encoder(2) + head + 41 * 101,
    }
    for name, count in expect.items():
        data = tiny_data(name)
        if name == "food101":
            data.input_dims = {"image": 768, "text": 768}
        model = build_model(name, data, "paper")
        assert sum(p.numel() for p in model.parameters()) == count, name
    own = build_model("food101", data, "paper", text_projection="own")  # our correction: its own projection
    assert sum(p.numel() for p in own.parameters()) == expect["food101"] + 40 * 769


def test_paper_deeplab_matches_official_size_and_shapes():
    """Four ResNet-101 DeepLabV3+ encoders: 235,226,980 parameters, the count of the official
    DeepLabMultiInput(output_stride=16) (measured once on a re-typed copy of models/segmodel.py).
    Built and run on the meta device: shapes without allocating or computing anything."""
    data = tiny_data("brats2021", n=2)
    with torch.device("meta"):
        model = build_model("brats2021", data, "paper")
        out = model({m: torch.empty(2, 1, 160, 160) for m in BRATS})
        clf = model.modality_classifier("flair")
        z = clf(out.features["flair"])
    assert sum(p.numel() for p in model.parameters()) == 235_226_980
    assert tuple(model.out_layer.weight.shape) == (4, 256, 1, 1) == tuple(clf.out_layer.weight.shape)
    assert tuple(out.logits.shape) == (2, 4, 160, 160) == tuple(z.shape)
    assert all(tuple(f.shape) == (2, 512, 40, 40) for f in out.features.values())


def test_paper_deeplab_forward_backward():
    torch.manual_seed(0)
    data = tiny_data("brats2021", n=2)
    model = build_model("brats2021", data, "paper")
    batch = next(iter(data.train))
    out = model(batch.inputs)
    data.task.loss(out.logits, batch.target).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    clf = model.modality_classifier("flair")
    assert clf(out.features["flair"].detach()).shape == out.logits.shape == (2, 4, 32, 32)


def test_deeplab_trains_on_a_batch_of_one():
    """A last batch of one slice: the ASPP image-pooling BatchNorm falls back to its running statistics."""
    torch.manual_seed(0)
    data = tiny_data("brats2021", n=1)
    model = build_model("brats2021", data, "smoke", arch="deeplab").train()
    batch = next(iter(data.train))
    data.task.loss(model(batch.inputs).logits, batch.target).backward()
    assert all(e.aspp.pool[1].adn.N.training for e in model.encoders.values())


def test_unet_pyramid_packing_is_lossless():
    from cggmlib.models.unet import pack, unpack

    levels = [torch.randn(2, c, 32 // 2**k, 32 // 2**k) for k, c in enumerate((3, 5, 7))]
    assert all(torch.equal(a, b) for a, b in zip(levels, unpack(pack(levels), (3, 5, 7))))


def test_mask_padding_ignores_trailing_zero_steps():
    """With mask_padding, zero steps appended to the last modality leave the prediction unchanged."""
    torch.manual_seed(0)
    data = tiny_data("iemocap")
    batch = next(iter(data.train))
    for mask, same in ((True, True), (False, False)):
        model = build_model("iemocap", data, "smoke", mask_padding=mask).eval()
        padded = dict(batch.inputs, vision=torch.cat([batch.inputs["vision"], torch.zeros(4, 9, 342)], dim=1))
        with torch.no_grad():
            assert torch.allclose(model(batch.inputs).logits, model(padded).logits, atol=1e-5) == same


def test_wrong_image_size_is_a_clear_error():
    data = tiny_data("brats2021")
    model = build_model("brats2021", data, "smoke")
    with pytest.raises(cg.ConfigError, match="multiples of 4"):
        model({m: torch.zeros(1, 1, 30, 30) for m in BRATS})
    with pytest.raises(cg.ConfigError, match="arch"):
        build_model("brats2021", data, "smoke", arch="resnet")


@pytest.mark.parametrize("name,official", [("mosi", M.sign_accuracy), ("iemocap", M.accuracy),
                                           ("brats2021", M.mean_dice)])
def test_cggm_uses_the_official_classifier_metric(name, official):
    """ε_m that CGGM logs is the task's official per-batch metric of classifier f_m's predictions."""
    torch.manual_seed(0)
    data = tiny_data(name)
    model = build_model(name, data, "smoke")
    strategy = make_strategy("cggm")
    strategy.setup(model, data)
    preds = {}
    for m in model.encoders:
        strategy.classifiers.heads[m].register_forward_hook(lambda mod, i, o, m=m: preds.__setitem__(m, o.detach()))
    batch = next(iter(data.train))
    out = strategy.forward(model, batch, 0)
    strategy.loss(model, batch, out, 0).backward()
    stats = strategy.after_backward(model, batch, out, 0)
    for m in model.encoders:
        assert float(stats[f"eps/{m}"]) == pytest.approx(float(official(preds[m], batch.target)), abs=1e-6)


def _standin_ready(name: str) -> bool:
    from cggmlib.data import DATASETS
    from cggmlib.data.standins import STANDINS, available

    return name in available() and importlib.util.find_spec(f"cggmlib.data.{DATASETS[name]}") is not None \
        and STANDINS.get(name) is not None


#: small stand-ins and loader options so one epoch takes seconds
STANDIN_SIZE = {"mosi": ({"train": 96, "valid": 32, "test": 32, "noalign": False}, {}),
                "iemocap": ({"utterances": 120, "folds": 1}, {"max_len": 48}),
                "food101": ({"train": 48, "test": 16}, {}),
                "brats2021": ({"cases": 6}, {})}


@pytest.fixture(scope="module")
def standin_root(tmp_path_factory):
    return tmp_path_factory.mktemp("standins")


@pytest.mark.parametrize("name", ["mosi", "iemocap", "food101", "brats2021"])
def test_one_epoch_joint_and_cggm_on_the_standin(name, standin_root):
    assert _standin_ready(name), f"the {name} stand-in writer or loader is missing"
    from cggmlib.data.standins import write_standin

    size, options = STANDIN_SIZE[name]
    write_standin(name, standin_root, **size)
    for strategy in ("joint", "cggm"):
        cfg = cg.Config(dataset=name, strategy=strategy, epochs=1, data_root=str(standin_root), data_kwargs=options)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the stand-ins carry the real releases' quirks (e.g. −inf audio)
            result = cg.run_experiment(cfg, progress=False)
        metrics = result.metrics
        assert metrics["standin"] is True and metrics["epochs_run"] == 1, metrics
        assert 0.0 <= metrics[data_metric(name)] <= 1.0
        steps = result.trace.frame().dropna(subset=["loss"])
        assert len(steps) >= 1 and steps["loss"].notna().all()
        if strategy == "cggm":
            assert {f"coeff/{m}" for m in cfg_modalities(name)} <= set(steps.columns)


def data_metric(name: str) -> str:
    return {"mosi": "acc2", "iemocap": "acc", "food101": "acc", "brats2021": "dice_mean"}[name]


def cfg_modalities(name: str) -> tuple:
    return {"mosi": ("text", "audio", "vision"), "iemocap": ("text", "audio", "vision"),
            "food101": ("image", "text"), "brats2021": BRATS}[name]
