"""The fast attention/dropout path of the token transformers (cggmlib/models/attention.py): equal to the
reference path (nn.MultiheadAttention, F.dropout) without dropout, the same dropout probability and an
unbiased output with it, seeded, and with the same parameter names (checkpoints, `encoders.{m}`)."""
import pytest
import torch
from torch import nn

from cggmlib.models import attention as A
from cggmlib.models.msa import MSAModel


def _pair(x, module, *args):
    """(fast, exact) outputs and input gradients of module(x, *args)."""
    outs = []
    for exact in (False, True):
        xi = x.clone().requires_grad_(True)
        with A.exact_attention(exact):
            y = module(xi, *args)
        y.square().sum().backward()
        outs.append((y.detach(), xi.grad))
    return outs


@pytest.mark.parametrize("masked", [False, True])
def test_fast_attention_equals_multihead_attention_without_dropout(masked):
    torch.manual_seed(0)
    attn = A.SelfAttention(40, 5, dropout=0.0).train()
    x = torch.randn(6, 17, 40)
    mask = None
    if masked:
        mask = torch.zeros(6, 17, dtype=torch.bool)
        mask[:, 11:] = True
    (y, g), (y_ref, g_ref) = _pair(x, attn, mask)
    ref = nn.MultiheadAttention(40, 5, batch_first=True)
    ref.load_state_dict(attn.state_dict())  # same parameter names: checkpoints load both ways
    direct = ref(x, x, x, key_padding_mask=mask, need_weights=False)[0]
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y, direct, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-5)


def test_eval_mode_ignores_attention_dropout_and_matches():
    torch.manual_seed(1)
    attn = A.SelfAttention(40, 5, dropout=0.3).eval()
    x = torch.randn(3, 9, 40)
    (y, _), (y_ref, _) = _pair(x, attn)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)


def test_model_fast_path_equals_exact_path_with_dropout_zero_and_keeps_parameter_names():
    torch.manual_seed(0)
    dims = {"text": 12, "audio": 5, "vision": 7}
    model = MSAModel(dims, 1, dim=20, heads=5, layers=2, fusion_layers=1, attn_dropout=0.0, relu_dropout=0.0,
                     embed_dropout=0.0, res_dropout=0.0, out_dropout=0.0).train()
    names = set(model.state_dict())
    assert "encoders.text.encoder.layers.0.attn.in_proj_weight" in names
    assert "encoders.vision.encoder.layers.1.attn.out_proj.bias" in names and "fusion.layers.0.attn.in_proj_bias" in names
    inputs = {m: torch.randn(4, 8, d) for m, d in dims.items()}
    grads = []
    for exact in (False, True):
        model.zero_grad()
        with A.exact_attention(exact):
            out = model(inputs)
        out.logits.square().sum().backward()
        grads.append((out.logits.detach(), [p.grad.clone() for p in model.parameters()]))
    (y, gs), (y_ref, gs_ref) = grads
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    for g, g_ref in zip(gs, gs_ref):
        torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("p", [0.1, 0.15, 0.2, 0.25])
def test_dropout_drops_with_the_requested_probability_and_keeps_the_expectation(p):
    torch.manual_seed(0)
    assert abs(A.drop_threshold(p) / 65536 - p) < 1 / 65536
    n = 2_000_000
    y = A.dropout(torch.ones(n), p, training=True)
    zeros = (y == 0).double().mean().item()
    sigma = (p * (1 - p) / n) ** 0.5
    assert abs(zeros - p) < 5 * sigma, (zeros, p)
    values = torch.unique(y).tolist()
    assert values[0] == 0.0 and values[1:] == [pytest.approx(A.kept_scale(p))]
    assert abs(y.double().mean().item() - 1.0) < 5 * sigma / (1 - p)
    # the reference path drops at the same rate
    with A.exact_attention():
        zeros_ref = (A.dropout(torch.ones(n), p, training=True) == 0).double().mean().item()
    assert abs(zeros - zeros_ref) < 8 * sigma


def test_attention_dropout_is_unbiased_and_seeded():
    torch.manual_seed(0)
    attn = A.SelfAttention(20, 4, dropout=0.2)
    x = torch.randn(1, 12, 20)
    with torch.no_grad():
        expected = attn.eval()(x)
        attn.train()
        torch.manual_seed(5)
        first = attn(x)
        torch.manual_seed(5)
        assert torch.equal(attn(x), first)  # masks come from the default generator
        assert not torch.allclose(attn(x), first)
        mean = attn(x.expand(4000, -1, -1)).mean(0, keepdim=True)  # 4000 independent draws in one batch
    assert (first - expected).abs().max() > 1e-2  # dropout is on in training
    assert (mean - expected).abs().max() < 0.05 * expected.abs().max()


def test_bad_dropout_probability_is_refused_when_built():
    with pytest.raises(ValueError, match="dropout probability"):
        A.Dropout(1.0)


def test_dropout_path_ignores_padded_keys():
    torch.manual_seed(0)
    attn = A.SelfAttention(20, 4, dropout=0.3).train()
    x = torch.randn(3, 10, 20)
    mask = torch.zeros(3, 10, dtype=torch.bool)
    mask[:, 6:] = True
    changed = x.clone()
    changed[:, 6:] = torch.randn(3, 4, 20) * 10
    torch.manual_seed(7)
    y = attn(x, mask)
    torch.manual_seed(7)
    y_changed = attn(changed, mask)
    torch.testing.assert_close(y[:, :6], y_changed[:, :6])  # same masks: padded keys and values have no effect
    assert torch.isfinite(y).all()
