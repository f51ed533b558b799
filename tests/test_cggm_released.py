"""CGGM's official variant against the released method (zrguo/CGGM@21e428c), beyond one step.

A float64 transcription of the released training step (src/msatrain.py:62–134, src/segtrain.py:
62–118), written in the test from those lines, runs 20+ steps beside our loop (`train_step`) at a
batch size that is not a power of two: coefficients and parameters must agree to 1e-4. The released
parameter selection (by name), the released classifier head, the released precision of ε and B, the
LR warm-up and the soft Dice are checked one by one. `python -m cggmlib.fidelity --released PATH` runs
the released files themselves (docs/methods.md, "Fidelity").
"""
import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import cggmlib as cg
from cggmlib.config import Config
from cggmlib.data.base import Batch
from cggmlib.models.msa import MSAModel, SequenceClassifier
from cggmlib.models.unet import MultiEncoderUNet
from cggmlib.modulation.cggm import scaled_parameters
from cggmlib.modulation.coefficients import balance_coefficients
from cggmlib.training.optim import CosineWarmup, step_tools
from cggmlib.tasks import Classification, Regression, Segmentation
from cggmlib.train import train_step

from test_models import tiny_data

ZERO = dict(attn_dropout=0.0, relu_dropout=0.0, embed_dropout=0.0, res_dropout=0.0, out_dropout=0.0)
DIMS = {"text": 7, "audio": 5, "vision": 6}


# ----------------------------------------------------------------------------- parameter selection

@pytest.mark.parametrize("name", ["mosi", "iemocap", "food101"])
def test_released_selection_is_the_transformer_encoders_by_name(name):
    """msatrain.py:119–122 scales names containing `encoders.{i}` (not `proj.{i}`); foodtrain.py:125–129
    `vision_encoder` / `text_encoder` (not `projv`): here `encoders.<m>.encoder.*`, never a projection."""
    data = tiny_data(name)
    model = cg.build_model(name, data, "paper")
    names = {id(p): n for n, p in model.named_parameters()}
    for m in model.encoders:
        chosen = {names[id(p)] for p in scaled_parameters(model, m, "released")}
        assert chosen == {n for n in names.values() if n.startswith(f"encoders.{m}.encoder.")}, m
        corrected = {names[id(p)] for p in scaled_parameters(model, m, "encoder")}
        projection = {n for n in names.values() if n.startswith(f"encoders.{m}.proj.")}
        if name == "food101":  # one projection shared by image and text (foodmodel.py:50): scaled by neither
            assert not projection & corrected
        else:
            assert corrected == chosen | projection
    # the count the released name filter selects in MOSI's paper model: 3 encoders of 5 MulT layers (d 40)
    if name == "mosi":
        layer = 3 * 40 * 40 + 3 * 40 + 40 * 40 + 40 + 2 * (40 * 160) + 160 + 40 + 2 * 2 * 40
        total = sum(p.numel() for m in model.encoders for p in scaled_parameters(model, m, "released"))
        assert total == 3 * (5 * layer + 2 * 40)


@pytest.mark.parametrize("arch", ["unet", "deeplab"])
def test_released_selection_on_brats_is_empty_and_the_correction_scales_each_encoder(arch):
    """segtrain.py:106–110 filters on `vision_encoder` / `text_encoder`: no BraTS parameter matches."""
    data = tiny_data("brats2021", n=2)
    with torch.device("meta"):
        model = cg.build_model("brats2021", data, "paper" if arch == "deeplab" else "smoke", arch=arch)
    names = [n for n, _ in model.named_parameters()]
    assert not [n for n in names if "vision_encoder" in n or "text_encoder" in n]  # the released filter
    for m in model.encoders:
        assert scaled_parameters(model, m, "released") == []
        assert len(scaled_parameters(model, m, "encoder")) == len(list(model.encoders[m].parameters()))


def test_official_variant_scales_nothing_on_brats_and_paper_scales_the_encoders():
    data = tiny_data("brats2021", n=4)
    model = cg.build_model("brats2021", data, "smoke")
    for variant, expect_scaled in (("official", False), ("paper", True)):
        strategy = cg.make_strategy("cggm", variant=variant)
        strategy.setup(model, data)
        assert bool(sum(len(v) for v in strategy.encoder_params.values())) is expect_scaled


# ----------------------------------------------------------------------------- classifier head

def test_released_classifier_head_applies_proj1_twice():
    """models/msamodel.py:89–94: x = proj1(x[0]); x = relu(proj1(x)); out_layer(x); no proj2."""
    torch.manual_seed(0)
    clf = SequenceClassifier(8, 3, layers=1, head="released", heads=2)
    assert clf.proj2 is None and not [n for n, _ in clf.named_parameters() if n.startswith("proj2")]
    x = torch.randn(4, 5, 8)
    h = clf.encoder(x)[:, 0]
    expected = clf.out_layer(F.relu(clf.proj1(clf.proj1(h))))
    torch.testing.assert_close(clf(x), expected, rtol=0, atol=0)
    two = SequenceClassifier(8, 3, layers=1, head="two_layer", heads=2)
    assert two.proj2 is not None


@pytest.mark.parametrize("variant,head", [("official", "released"), ("paper", "two_layer")])
def test_variant_picks_the_head_and_an_option_overrides_it(variant, head):
    data = tiny_data("mosi")
    model = cg.build_model("mosi", data, "smoke")
    strategy = cg.make_strategy("cggm", variant=variant)
    strategy.setup(model, data)
    assert {h.head for h in strategy.classifiers.heads.values()} == {head}
    other = "two_layer" if head == "released" else "released"
    strategy = cg.make_strategy("cggm", variant=variant, classifier_head=other)
    strategy.setup(model, data)
    assert {h.head for h in strategy.classifiers.heads.values()} == {other}


def test_unknown_choice_is_a_clear_error():
    with pytest.raises(cg.ConfigError, match="scaled must be one of"):
        cg.make_strategy("cggm", scaled="everything")


# ----------------------------------------------------------------------------- precision

def test_cancelling_gains_at_batch_24_follow_the_released_float64_arithmetic():
    """Accuracies 12/24 → 13/24, 11/24, 12/24: the gains cancel. The released float64 B (scikit-learn
    accuracies, `sum(diff) + 1e-8`) and a float32 B differ in sign and size; ours follows float64."""
    task, n = Classification(2), 24
    target = torch.zeros(n, dtype=torch.long)

    def logits(correct):  # class 0 predicted for the first `correct` samples
        z = torch.zeros(n, 2)
        z[:correct, 0], z[correct:, 1] = 1.0, 1.0
        return z

    before, after = (12, 12, 12), (13, 11, 12)
    ours = {}
    for dtype in (torch.float64, torch.float32):
        eps0 = torch.stack([task.step_metric(logits(k), target, dtype=dtype) for k in before])
        eps1 = torch.stack([task.step_metric(logits(k), target, dtype=dtype) for k in after])
        ours[dtype] = balance_coefficients(eps1 - eps0).tolist()
    acc0, acc1 = [k / n for k in before], [k / n for k in after]  # accuracy_score: count / n in float64
    diff = [a - b for a, b in zip(acc1, acc0)]
    total = sum(diff) + 1e-8
    released = [(total - d) / total for d in diff]
    assert max(abs(x) for x in released) > 1e6
    assert ours[torch.float64] == pytest.approx(released, rel=1e-12)
    assert ours[torch.float32] != pytest.approx(released, rel=0.1)


# ----------------------------------------------------------------------------- 20-step transcription

class ReleasedStep:
    """The released CGGM step (src/msatrain.py:62–134; src/segtrain.py:62–118 with `clip=None`), in
    Python floats: ε from float64 accuracies (or a float32 Dice tensor), B with `sum(diff) + 1e-8`,
    cosines of cloned output-layer weights, L_gm added one step later, parameters picked by name."""

    def __init__(self, model, heads, criterion, metric, selected, rho, lam, clip, opt, cls_opt):
        self.model, self.heads, self.criterion, self.metric = model, heads, criterion, metric
        self.selected, self.rho, self.lam, self.clip = selected, rho, lam, clip
        self.opt, self.cls_opt = opt, cls_opt
        self.acc1, self.l_gm = [0] * len(heads), None

    def step(self, inputs, y):
        self.model.zero_grad()
        out = self.model(dict(inputs))
        loss = self.criterion(out.logits, y)
        if self.l_gm is not None:
            loss = loss + self.lam * self.l_gm
        loss.backward()
        self.cls_opt.zero_grad()
        zs = [h(out.features[m].detach()) for m, h in self.heads.items()]
        cls_loss = self.criterion(zs[0], y)
        for z in zs[1:]:
            cls_loss = cls_loss + self.criterion(z, y)
        cls_loss.backward()
        fusion = self.model.out_layer.weight
        cos = [F.cosine_similarity(h.out_layer.weight.clone().view(-1), fusion.clone().view(-1), dim=0)
               for h in self.heads.values()]
        acc2 = [self.metric(z, y) for z in zs]
        diff = [a - b for a, b in zip(acc2, self.acc1)]
        diff_sum = sum(diff) + 1e-8
        coeff = [(diff_sum - d) / diff_sum for d in diff]
        self.acc1 = acc2
        weighted = coeff[0] * cos[0]
        for c, s in zip(coeff[1:], cos[1:]):
            weighted = weighted + c * s
        self.l_gm = (float(sum(abs(float(c)) for c in coeff)) - weighted) / len(coeff)
        for i, m in enumerate(self.heads):
            for name, p in self.model.named_parameters():
                if self.selected(name, i, m):
                    p.grad *= coeff[i] * self.rho
        self.cls_opt.step()
        if self.clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        self.opt.step()
        return [float(c) for c in coeff]


def sign_accuracy_f64(z, y):  # src/eval_metrics.py:49–56 `train_eval_senti`: accuracy_score of (> 0)
    return float(np.mean((z.detach().view(-1).numpy() > 0) == (y.view(-1).numpy() > 0)))


def accuracy_f64(z, y):  # src/eval_metrics.py:59–66 `train_eval_iemo`
    return float(np.mean(np.argmax(z.detach().numpy(), axis=1) == y.numpy()))


def _dice(o, t, eps=1e-3):  # src/eval_metrics.py:129–134 `Dice`
    inter = torch.sum(o * t, dim=(1, 2)) + eps
    union = torch.sum(o, dim=(1, 2)) + torch.sum(t, dim=(1, 2)) + eps * 2
    return torch.mean(2 * inter / union)


def seg_dice_f32(z, y):  # src/eval_metrics.py:137–142 `train_eval_seg`: a float32 tensor
    o = torch.argmax(z.detach(), dim=1)
    return (_dice((o == 3).float(), (y == 3).float()) + _dice(((o == 1) | (o == 3)).float(), ((y == 1) | (y == 3)).float())
            + _dice((o != 0).float(), (y != 0).float())) / 3


def run_both(model, task, batches, *, optimizer, lr, wd, clip, head_optimizer, head_lr, head_wd, metric, selected):
    strategy = cg.make_strategy("cggm", rho=1.3, lam=0.2, variant="official", overlap=False,
                                head_optimizer=head_optimizer, head_lr=head_lr, head_weight_decay=head_wd)
    strategy.setup(model, task)
    ref_model, ref_heads = copy.deepcopy(model), copy.deepcopy(strategy.classifiers.heads)
    make = {"adam": lambda p, l, w: torch.optim.Adam(p, lr=l, weight_decay=w),
            "sgd": lambda p, l, w: torch.optim.SGD(p, lr=l, momentum=0.9, weight_decay=w)}
    ref = ReleasedStep(ref_model, ref_heads, task.loss, metric, selected, 1.3, 0.2, clip,
                       make[optimizer](ref_model.parameters(), lr, wd), make[head_optimizer](ref_heads.parameters(), head_lr, head_wd))
    cfg = Config(dataset="custom", strategy="cggm", optimizer=optimizer, lr=lr, weight_decay=wd, grad_clip=clip or 0.0,
                 batch_size=len(batches[0][1]), epochs=1)
    tools = step_tools(cfg, model, strategy, torch.device("cpu"), grad_norms=False)
    model.train(), ref_model.train()
    for k, (x, y) in enumerate(batches):
        row = train_step(model, strategy, Batch(x, y), 0, tools, step=k)
        coeff = ref.step(x, y)
        ours = [float(row[f"balance/{m}"]) for m in model.encoders]
        assert ours == pytest.approx(coeff, rel=1e-4, abs=1e-4), f"step {k}"
    for (name, a), b in zip(model.state_dict().items(), ref_model.state_dict().values()):
        if name.endswith("attn.in_proj_bias"):  # the key bias has a zero gradient (softmax ignores it): Adam
            d = a.numel() // 3                  # turns its rounding noise into steps of ±lr on either side
            a, b = torch.cat([a[:d], a[2 * d:]]), torch.cat([b[:d], b[2 * d:]])
        torch.testing.assert_close(a, b, rtol=0, atol=1e-4, msg=name)
    return strategy


def _sequence_batches(n, batch, out, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [({m: torch.randn(batch, 6, d, generator=g) for m, d in DIMS.items()},
             torch.rand(batch, generator=g) * 6 - 3 if out == 1 else torch.randint(out, (batch,), generator=g))
            for _ in range(n)]


@pytest.mark.parametrize("task_name", ["mosi", "iemocap"])
def test_official_matches_a_float64_transcription_of_the_released_msa_step_for_20_steps(task_name):
    torch.manual_seed(0)
    out = 1 if task_name == "mosi" else 4
    model = MSAModel(DIMS, out, dim=10, heads=2, layers=2, fusion_layers=1, classifier_layers=1, **ZERO)
    task = Regression() if task_name == "mosi" else Classification(4)
    metric = sign_accuracy_f64 if task_name == "mosi" else accuracy_f64
    strategy = run_both(model, task, _sequence_batches(22, 24, out), optimizer="adam", lr=1e-3, wd=0.0, clip=0.8,
                        head_optimizer="adam", head_lr=5e-4, head_wd=0.0, metric=metric,
                        selected=lambda name, i, m: f"encoders.{m}.encoder." in name)
    assert strategy.classifiers.prev_eps.dtype == torch.float64


def test_official_matches_the_released_segmentation_step_for_20_steps():
    """segtrain.py: float32 Dice ε and B, a name filter that scales nothing, SGD, no clipping."""
    torch.manual_seed(0)
    mods = ("flair", "t1ce", "t1", "t2")
    model = MultiEncoderUNet({m: 1 for m in mods}, 4, channels=(4, 8), head_channels=6)
    g = torch.Generator().manual_seed(1)
    batches = [({m: torch.randn(6, 1, 16, 16, generator=g) for m in mods}, torch.randint(4, (6, 16, 16), generator=g))
               for _ in range(20)]
    strategy = run_both(model, Segmentation(), batches, optimizer="sgd", lr=0.01, wd=3e-4, clip=None,
                        head_optimizer="sgd", head_lr=6e-3, head_wd=3e-4, metric=seg_dice_f32,
                        selected=lambda name, i, m: "vision_encoder" in name or "text_encoder" in name)
    assert strategy.classifiers.prev_eps.dtype == torch.float32


# ----------------------------------------------------------------------------- LR warm-up

def test_warmup_is_the_released_linspace_and_the_correction_reaches_base_one_step_later():
    """eval_metrics.py:136–148 `cosine_scheduler`: np.linspace(start, base, W), then a cosine."""
    base, final, epochs, per_epoch, warm = 0.01, 0.001, 4, 5, 2
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base)
    sched = CosineWarmup(opt, base, epochs, per_epoch, warm, final_lr=final)
    ours = [sched.lr_at(s) for s in range(epochs * per_epoch)]
    w = warm * per_epoch
    iters = np.arange(epochs * per_epoch - w)
    released = np.concatenate((np.linspace(4e-4, base, w),
                               final + 0.5 * (base - final) * (1 + np.cos(np.pi * iters / len(iters)))))
    assert ours == pytest.approx(released.tolist(), rel=1e-12)
    assert ours[w - 1] == pytest.approx(base)
    exclusive = CosineWarmup(opt, base, epochs, per_epoch, warm, final_lr=final, warmup="exclusive")
    assert exclusive.lr_at(w - 1) < base and exclusive.lr_at(w) == pytest.approx(base)


# ----------------------------------------------------------------------------- corrections in the audit

def test_audit_corrections_table_pairs_each_fix_with_the_official_run():
    import pandas as pd

    from cggmlib.analysis import audit
    runs = pd.DataFrame([
        dict(done=True, label="cggm", dataset="mosi", seed=0, standin=True, metrics={"selected_on": "val/mae", "mae": 1.2}),
        dict(done=True, label="cggm.fix_head", dataset="mosi", seed=0, standin=True,
             metrics={"selected_on": "val/mae", "mae": 1.1}),
        dict(done=True, label="cggm.fix_dice", dataset="brats2021", seed=0, standin=True, metrics={}),  # no partner
    ])
    table = audit.fixes(runs)
    assert len(table) == 1
    row = table.iloc[0]
    assert (row["correction"], row["official"], row["with the correction"]) == ("classifier_head='two_layer'", 1.2, 1.1)
    assert row["difference"] == pytest.approx(-0.1)
    deviations = audit.deviations(table).set_index("id")["measured effect of the correction"]
    assert deviations["2.2"] == "mosi mae -0.1" and deviations["S"] == "not run" and deviations["D1"] == ""


def test_task_options_reach_the_task_and_unknown_ones_are_named():
    from cggmlib.experiment import task_with
    assert task_with(Segmentation(), {"smooth_numerator": True}).smooth_numerator is True
    assert task_with(Segmentation(), {"smooth_numerator": "yes"}).smooth_numerator is True  # --task-opt text
    with pytest.raises(cg.ConfigError, match="smooth_numerator"):
        task_with(Segmentation(), {"smooth_numerator": "maybe"})
    with pytest.raises(cg.ConfigError, match="no option 'smoothing'; did you mean 'smooth'"):
        task_with(Segmentation(), {"smoothing": True})
