"""A transcription of the released CGGM training step, to time ours against it (`cggm bench --suite released`).

Our own code, written to perform the same tensor operations as the released code at
zrguo/CGGM@21e428c (it copies none of it), so that the gap is measurable without that repository:

- `FairseqAttention`: the MulT/fairseq attention of modules/multihead_attention.py:59-134 on
  (T, B, d): one in-projection split in three, q scaled by head_dim^-1/2, (B·H, T, d_h) batched
  matmuls, softmax in float32, `F.dropout` on the attention weights, the head-averaged weights
  computed and returned as there;
- `FairseqLayer`: pre-LN layer with `F.dropout` on the residual and ReLU branches
  (modules/transformer.py:84-100); `FairseqEncoder`: √d scale, sinusoidal positions looked up by
  index from a cached table, embedding dropout, layers, LayerNorm (modules/transformer.py:37-53,
  modules/position_embedding.py:62-76);
- `ReleasedModel`: per modality Conv1d projection then encoder on (T, B, d), the detached clones of
  the features, fusion over the time-concatenated sequences, position 0, residual MLP, out_layer
  (models/msamodel.py:53-74; models/foodmodel.py:45-60 is the same for Food-101 on cached tokens);
- `ReleasedClassifier`: 2-layer encoder, position 0, proj1 applied twice, ReLU, out_layer
  (models/msamodel.py:77-94);
- `ReleasedStep`: the body of the training loop, src/msatrain.py:59-131: zero_grad, forward, loss
  (+ λ·L_gm of the previous step), backward; for CGGM the classifiers' forward and backward, the
  cosine of the out_layer weights (src/eval_metrics.py:165-173), per-classifier accuracy on the
  host, the coefficients, the gradient scaling by name (`encoders.{i}`), the classifiers' Adam step;
  then clipping and the model's Adam step (PyTorch's default per-parameter Adam on CPU), and
  `loss.item()`.

Sizes and dropout probabilities are read from our model of the same case, so both sides compute the
same mathematics; only the implementation differs. The released Food-101 step also runs the frozen
ViT and BERT on every batch; that cost is measured by the `food_cache` suite and left out here.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class FairseqAttention(nn.Module):
    """Self-attention on (T, B, d) with explicit softmax and `F.dropout` on the weights."""

    def __init__(self, dim: int, heads: int, attn_dropout: float):
        super().__init__()
        self.dim, self.heads, self.attn_dropout = dim, heads, attn_dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.xavier_uniform_(self.out_proj.weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x):
        t, b, d = x.shape
        hd = d // self.heads
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        q = q * hd ** -0.5
        q, k, v = (z.contiguous().view(t, b * self.heads, hd).transpose(0, 1) for z in (q, k, v))
        weights = torch.bmm(q, k.transpose(1, 2))
        weights = F.softmax(weights.float(), dim=-1).type_as(weights)
        weights = F.dropout(weights, p=self.attn_dropout, training=self.training)
        out = torch.bmm(weights, v).transpose(0, 1).contiguous().view(t, b, d)
        averaged = weights.view(b, self.heads, t, t).sum(dim=1) / self.heads
        return self.out_proj(out), averaged


class FairseqLayer(nn.Module):
    def __init__(self, dim, heads, attn_dropout, relu_dropout, res_dropout):
        super().__init__()
        self.self_attn = FairseqAttention(dim, heads, attn_dropout)
        self.relu_dropout, self.res_dropout = relu_dropout, res_dropout
        self.fc1, self.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)
        self.layer_norms = nn.ModuleList([nn.LayerNorm(dim), nn.LayerNorm(dim)])

    def forward(self, x):
        h, _ = self.self_attn(self.layer_norms[0](x))
        x = x + F.dropout(h, p=self.res_dropout, training=self.training)
        h = F.dropout(F.relu(self.fc1(self.layer_norms[1](x))), p=self.relu_dropout, training=self.training)
        return x + F.dropout(self.fc2(h), p=self.res_dropout, training=self.training)


class FairseqEncoder(nn.Module):
    def __init__(self, dim, heads, layers, attn_dropout, relu_dropout, res_dropout, embed_dropout):
        super().__init__()
        self.dim, self.embed_dropout = dim, embed_dropout
        self.layers = nn.ModuleList(FairseqLayer(dim, heads, attn_dropout, relu_dropout, res_dropout)
                                    for _ in range(layers))
        self.layer_norm = nn.LayerNorm(dim)
        self.table = None

    def positions(self, tokens):
        """(B, T) → (B, T, d): positions 1.. of non-zero tokens (0 for zeros), looked up in a sinusoid table."""
        b, t = tokens.shape
        if self.table is None or self.table.shape[0] < t + 1:
            half = self.dim // 2
            freq = torch.exp(torch.arange(half, dtype=torch.float) * -(math.log(10000) / (half - 1)))
            angle = torch.arange(t + 1, dtype=torch.float)[:, None] * freq[None]
            self.table = torch.cat([angle.sin(), angle.cos()], dim=1)
            self.table[0] = 0
            self.table = self.table.to(tokens.device)
        nonzero = tokens.ne(0)
        index = tokens.clone().masked_scatter_(nonzero, torch.arange(1, t + 1, device=tokens.device)
                                               .expand(b, t)[nonzero].to(tokens.dtype)).long()
        return self.table.index_select(0, index.reshape(-1)).view(b, t, -1).detach()

    def forward(self, x_in):
        x = math.sqrt(self.dim) * x_in
        x = x + self.positions(x_in.transpose(0, 1)[:, :, 0]).transpose(0, 1)
        x = F.dropout(x, p=self.embed_dropout, training=self.training)
        for layer in self.layers:
            x = layer(x)
        return self.layer_norm(x)


class ReleasedModel(nn.Module):
    """Projections, encoders (named `encoders.{i}`), fusion, residual MLP, out_layer on a list of (B, T, d_m)."""

    def __init__(self, input_dims, num_outputs, dim, heads, layers, fusion_layers, out_dropout, **drops):
        super().__init__()
        self.proj = nn.ModuleList(nn.Conv1d(d, dim, kernel_size=1) for d in input_dims)
        self.encoders = nn.ModuleList(FairseqEncoder(dim, heads, layers, **drops) for _ in input_dims)
        self.fusion = FairseqEncoder(dim, heads, fusion_layers, **drops)
        self.proj1, self.proj2 = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.out_layer = nn.Linear(dim, num_outputs)
        self.out_dropout = out_dropout

    def forward(self, xs):
        hs, detached = [], []
        for proj, encoder, x in zip(self.proj, self.encoders, xs):
            h = encoder(proj(x.transpose(1, 2)).permute(2, 0, 1))
            hs.append(h)
            detached.append(h.clone().detach())
        last = self.fusion(torch.cat(hs))[0]
        out = self.proj2(F.dropout(F.relu(self.proj1(last)), p=self.out_dropout, training=self.training))
        return self.out_layer(out + last), detached


class ReleasedClassifier(nn.Module):
    def __init__(self, dim, num_outputs, heads, layers, **drops):
        super().__init__()
        self.bone = FairseqEncoder(dim, heads, layers, **drops)
        self.proj1, self.out_layer = nn.Linear(dim, dim), nn.Linear(dim, num_outputs)

    def forward(self, x):
        return self.out_layer(F.relu(self.proj1(self.proj1(self.bone(x)[0]))))


def released_sizes(model) -> dict:
    """The sizes and dropouts of our `TokenFusionTransformer` `model`, as `ReleasedModel` arguments."""
    first = next(iter(model.encoders.values()))
    kw = model.encoder_kwargs
    return dict(input_dims=[e.proj.in_channels for e in model.encoders.values()], num_outputs=model.num_outputs,
                dim=model.dim, heads=kw["heads"], layers=len(first.encoder.layers),
                fusion_layers=len(model.fusion.layers), out_dropout=model.out_dropout.p,
                drops={k: kw[k] for k in ("attn_dropout", "relu_dropout", "res_dropout", "embed_dropout")},
                classifier_layers=model.classifier_layers)


class ReleasedStep:
    """One step of src/msatrain.py's loop (CGGM when `cggm`, else modulation 'none'); `step()` as `Runner`."""

    def __init__(self, sizes: dict, batch, regression: bool, cggm: bool, seed: int = 0, lr: float = 1e-3,
                 cls_lr: float = 5e-4, clip: float = 0.8, rou: float = 1.3, lamda: float = 0.2):
        torch.manual_seed(seed)
        drops = sizes["drops"]
        self.model = ReleasedModel(sizes["input_dims"], sizes["num_outputs"], sizes["dim"], sizes["heads"],
                                   sizes["layers"], sizes["fusion_layers"], sizes["out_dropout"], **drops).train()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=lr)
        self.classifier = self.cls_optimizer = None
        if cggm:
            self.classifier = nn.ModuleList(
                ReleasedClassifier(sizes["dim"], sizes["num_outputs"], sizes["heads"], sizes["classifier_layers"],
                                   **drops) for _ in sizes["input_dims"]).train()
            self.cls_optimizer = torch.optim.Adam(self.classifier.parameters(), lr=cls_lr)
        self.inputs, self.target = list(batch.inputs.values()), batch.target
        self.regression, self.clip, self.rou, self.lamda = regression, clip, rou, lamda
        self.criterion = nn.L1Loss() if regression else nn.CrossEntropyLoss()
        self.acc1, self.l_gm = [0.0] * len(self.inputs), None

    def _accuracy(self, pred, y) -> float:
        pred, y = pred.detach().cpu(), y.cpu()
        if self.regression:
            return ((pred.view(-1) > 0) == (y.view(-1) > 0)).float().mean().item()
        return (pred.argmax(1) == y).float().mean().item()

    def step(self, batch=None) -> None:
        self.model.zero_grad()
        preds, hs = self.model(list(self.inputs))
        preds = preds.view(-1) if self.regression else preds
        loss = self.criterion(preds, self.target)
        if self.classifier is not None and self.l_gm is not None:
            loss = loss + self.lamda * self.l_gm
        loss.backward()
        if self.classifier is not None:
            self._modulate(hs)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        self.optimizer.step()
        loss.item()

    def _modulate(self, hs) -> None:
        self.cls_optimizer.zero_grad()
        results = [f(h) for f, h in zip(self.classifier, hs)]
        results = [r.view(-1) for r in results] if self.regression else results
        fused = next(p for n, p in self.model.named_parameters() if "out_layer.weight" in n)
        sum(self.criterion(r, self.target) for r in results).backward()
        weights = [p for n, p in self.classifier.named_parameters() if "out_layer.weight" in n]
        cosines = [F.cosine_similarity(w.clone().view(-1), fused.clone().view(-1), dim=0) for w in weights]
        acc2 = [self._accuracy(r, self.target) for r in results]
        diff = [a - b for a, b in zip(acc2, self.acc1)]
        total = sum(diff) + 1e-8
        coeff = [(total - d) / total for d in diff]
        self.acc1 = acc2
        self.l_gm = (sum(abs(c) for c in coeff) - sum(c * s for c, s in zip(coeff, cosines))) / len(coeff)
        for i, c in enumerate(coeff):
            for name, p in self.model.named_parameters():
                if f"encoders.{i}" in name:
                    p.grad *= c * self.rou
        self.cls_optimizer.step()


class ReleasedForward:
    """The released model's training-mode forward pass and loss only (no backward)."""

    def __init__(self, released: ReleasedStep):
        self.r = released

    def step(self, batch=None) -> None:
        preds, _ = self.r.model(list(self.r.inputs))
        self.r.criterion(preds.view(-1) if self.r.regression else preds, self.r.target).item()


class ReleasedForwardBackward(ReleasedForward):
    """The released model's zero_grad, training-mode forward pass, loss and backward (src/msatrain.py:59-78)."""

    def step(self, batch=None) -> None:
        r = self.r
        r.model.zero_grad()
        preds, _ = r.model(list(r.inputs))
        r.criterion(preds.view(-1) if r.regression else preds, r.target).backward()


class ReleasedOptimizer:
    """The released clipping and Adam step (src/msatrain.py:126-127) on the gradients of one backward pass."""

    def __init__(self, released: ReleasedStep):
        self.r = released
        ReleasedForwardBackward(released).step()

    def step(self, batch=None) -> None:
        torch.nn.utils.clip_grad_norm_(self.r.model.parameters(), self.r.clip)
        self.r.optimizer.step()


class ReleasedClassifiers:
    """The released classifiers alone on fixed detached features: forward, backward, Adam step."""

    def __init__(self, released: ReleasedStep):
        self.r = released
        with torch.no_grad():
            self.hs = self.r.model(list(self.r.inputs))[1]

    def step(self, batch=None) -> None:
        r = self.r
        r.cls_optimizer.zero_grad()
        results = [f(h) for f, h in zip(r.classifier, self.hs)]
        results = [x.view(-1) for x in results] if r.regression else results
        sum(r.criterion(x, r.target) for x in results).backward()
        r.cls_optimizer.step()
