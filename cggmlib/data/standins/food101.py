"""UPMC-Food101 stand-in: train.json / test.json and JPEGs in the real layout, plus tiny random BERT
and ViT folders at the default model locations, so `cggmlib.data.food101` runs its real path offline
(JSON through `datasets`, tokeniser, frozen BERT/ViT, feature cache).

Signal: the text tokens name the class in `text_signal` of the samples (the informative modality);
each class has a mean image colour buried in strong pixel noise (the weak modality). NOT the real
data: every number computed from it is a stand-in number. Data card: data_cards/food101.md.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ...files import atomic_write_text
from . import mark

FILLER = ("ingredients cup cups tablespoon teaspoon salt pepper water oil olive butter sugar flour egg eggs milk "
          "cream garlic onion minutes heat add mix stir bake serve until the and with of into large small fresh "
          "chopped sliced recipe cook pan oven bowl").split()
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
LAYOUT = ("train.json", "test.json", "images/*/*/*.jpg", "models/bert-base-uncased/*", "models/vit-base-patch16-224/*")
"""the files this writer creates (`write_standin` recognises a stand-in killed before its marker by them)"""


def write(path, seed: int = 0, classes: int = 5, train: int = 240, test: int = 80, image_size: int = 64,
          hidden: int = 32, text_signal: float = 0.85, image_signal: float = 0.35) -> Path:
    """Write the stand-in into `path` and return it (`classes` of the 101 names, `train`/`test` samples)."""
    from ..food101 import CLASS_NAMES

    root = Path(path)
    rng = np.random.default_rng(seed)
    names = [CLASS_NAMES[i] for i in sorted(rng.choice(len(CLASS_NAMES), size=classes, replace=False))]
    colours = rng.uniform(40, 215, size=(classes, 3))
    for split, n in (("train", train), ("test", test)):
        rows = []
        for k in range(n):
            c = k % classes
            told = c if rng.random() < text_signal else int(rng.integers(classes))
            words = list(rng.choice(FILLER, size=int(rng.integers(8, 30))))
            at = int(rng.integers(len(words) + 1))
            words[at:at] = names[told].split("_")
            sample_id = f"{split}_{k:05d}"
            rel = f"images/{split}/{names[c]}/{sample_id}.jpg"
            noise = rng.normal(0, 1, size=(image_size, image_size, 3))
            pixels = 127.5 + image_signal * (colours[c] - 127.5) + 55 * noise + rng.normal(0, 25, size=3)
            _save_jpeg(root / rel, pixels)
            rows.append({"id": sample_id, "label": names[c], "text_tokens": words, "img_path": rel})
        atomic_write_text(root / f"{split}.json", json.dumps(rows))
    _write_models(root / "models", seed, hidden, sorted(set(FILLER) | {w for x in CLASS_NAMES for w in x.split("_")}))
    return mark(root, "food101", seed, {"classes": classes, "train": train, "test": test, "image_size": image_size,
                                        "hidden": hidden, "text_signal": text_signal, "image_signal": image_signal}
                ).parent


def _save_jpeg(path: Path, pixels: np.ndarray) -> None:
    """Plain write (no fsync per image): the folder only counts as a stand-in once `mark` has run."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, format="JPEG", quality=90)


def _write_models(folder: Path, seed: int, hidden: int, words: list[str]) -> None:
    """Tiny randomly initialised BERT (with a word-level vocab) and ViT (224 px, patch 16: 197 tokens)."""
    import torch
    import transformers as T

    bert_dir, vit_dir = folder / "bert-base-uncased", folder / "vit-base-patch16-224"
    bert_dir.mkdir(parents=True, exist_ok=True)
    vit_dir.mkdir(parents=True, exist_ok=True)
    vocab = SPECIAL + words
    atomic_write_text(bert_dir / "vocab.txt", "\n".join(vocab) + "\n")
    small = dict(hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2, intermediate_size=2 * hidden)
    verbosity = T.logging.get_verbosity()
    T.logging.set_verbosity_error()
    T.logging.disable_progress_bar()
    try:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            T.BertTokenizerFast(vocab=str(bert_dir / "vocab.txt")).save_pretrained(bert_dir)
            T.BertModel(T.BertConfig(vocab_size=len(vocab), max_position_embeddings=64, **small),
                        add_pooling_layer=False).save_pretrained(bert_dir)
            T.ViTModel(T.ViTConfig(image_size=224, patch_size=16, **small),
                       add_pooling_layer=False).save_pretrained(vit_dir)
        (getattr(T, "ViTImageProcessorPil", None) or T.ViTImageProcessor)().save_pretrained(vit_dir)
    finally:
        T.logging.set_verbosity(verbosity)
        T.logging.enable_progress_bar()
