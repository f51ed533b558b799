"""UPMC-Food101 (Wang et al., ICME workshops 2015): 101-way recipe classification from an image and
the page text, as CGGM uses it (Guo et al., NeurIPS 2024, Sec. 4.1): frozen ViT-B/16 tokens for the
image and frozen BERT tokens for the text. Data card: data_cards/food101.md.

Reference code: zrguo/CGGM@21e428c datasets/FOODDataset.py (format, CLASS_NAME, tokenisation),
zrguo/CGGM@21e428c src/foodtrain.py (frozen `last_hidden_state` features).

Deviations from the official code (each in the data card):
- a real dev split carved from train (stratified, fixed `split_seed`) is used for validation; the
  official code validates, and reports the best epoch, on test. `dev_fraction=0` restores that;
- features are computed once and cached on disk (float16), so image augmentation (flip, colour
  jitter, grayscale, blur) cannot be applied;
- images are normalised with the ViT mean/std (`image_norm="vit"`); `"official"` feeds [0, 1] pixels;
- the tokenizer is read from the local BERT folder, not the hub id `bert-base-uncased`;
- training batches are reshuffled every epoch, seeded by (seed, epoch); `shuffle=False` keeps the
  official fixed order (one `random.Random(0)` shuffle).
"""
from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, DataError, ResultsError
from ..tasks import Classification
from .base import Data, DoctorReport, TensorLoader, card, disk_errors, scan_bar
from .standins import is_standin

CARD = card("food101")
MODALITIES = ("image", "text")
KEYS = ("id", "label", "text_tokens", "img_path")
ROW = 'a JSON list of objects {"id": str, "label": class name, "text_tokens": [str, ...], "img_path": str}'

#: the 101 class names in the official order (zrguo/CGGM@21e428c datasets/FOODDataset.py CLASS_NAME); index = target
CLASS_NAMES = (
    "apple_pie baby_back_ribs baklava beef_carpaccio beef_tartare beet_salad beignets bibimbap bread_pudding "
    "breakfast_burrito bruschetta caesar_salad cannoli caprese_salad carrot_cake ceviche cheese_plate cheesecake "
    "chicken_curry chicken_quesadilla chicken_wings chocolate_cake chocolate_mousse churros clam_chowder "
    "club_sandwich crab_cakes creme_brulee croque_madame cup_cakes deviled_eggs donuts dumplings edamame "
    "eggs_benedict escargots falafel filet_mignon fish_and_chips foie_gras french_fries french_onion_soup "
    "french_toast fried_calamari fried_rice frozen_yogurt garlic_bread gnocchi greek_salad "
    "grilled_cheese_sandwich grilled_salmon guacamole gyoza hamburger hot_and_sour_soup hot_dog huevos_rancheros "
    "hummus ice_cream lasagna lobster_bisque lobster_roll_sandwich macaroni_and_cheese macarons miso_soup mussels "
    "nachos omelette onion_rings oysters pad_thai paella pancakes panna_cotta peking_duck pho pizza pork_chop "
    "poutine prime_rib pulled_pork_sandwich ramen ravioli red_velvet_cake risotto samosa sashimi scallops "
    "seaweed_salad shrimp_and_grits spaghetti_bolognese spaghetti_carbonara spring_rolls steak "
    "strawberry_shortcake sushi tacos takoyaki tiramisu tuna_tartare waffles").split()
CLASS_INDEX = {name: i for i, name in enumerate(CLASS_NAMES)}
assert len(CLASS_NAMES) == 101


def read_split(root: Path, split: str, hf_cache: Path):
    """`root/<split>.json` through Hugging Face `datasets`, validated row by row.

    Returns (dataset, targets (N,) int64). Raises DataError naming the file, the sample and the field.
    """
    import datasets

    file = root / f"{split}.json"
    if not file.is_file():
        raise DataError(f"UPMC-Food101: the {split} split file is missing", path=file, expected=ROW, card=CARD)
    bars = not datasets.utils.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        with disk_errors(hf_cache):  # the Arrow cache it writes may fill the disk: say so
            ds = datasets.load_dataset("json", data_files={split: str(file)}, split=split, cache_dir=str(hf_cache))
    except ResultsError:
        raise
    except Exception as err:  # datasets wraps the JSON/Arrow error; find what is wrong with the file
        raise _json_problem(file, split, err) from None
    finally:
        if bars:
            datasets.enable_progress_bars()
    if len(ds) == 0:
        raise DataError(f"UPMC-Food101: the {split} split is empty", path=file, expected=ROW, card=CARD)
    for key in KEYS:
        if key not in ds.column_names:
            raise DataError(f"UPMC-Food101: {file.name} has no {key!r} key in its samples", path=file,
                            field=key, expected=ROW, card=CARD)
    cols = {k: ds[k] for k in KEYS}
    targets = np.empty(len(ds), dtype=np.int64)
    for i in range(len(ds)):
        sample = f"sample {i} (id {cols['id'][i]!r})"
        for key in KEYS:
            value = cols[key][i]
            ok = isinstance(value, list) and all(isinstance(t, str) for t in value) if key == "text_tokens" \
                else isinstance(value, str) or (key == "id" and isinstance(value, int))
            if not ok:
                raise DataError(f"UPMC-Food101: {sample} of {file.name} has {key} = {value!r:.60}", path=file,
                                field=key, expected="a list of word strings" if key == "text_tokens" else
                                "a string" + (" or an integer" if key == "id" else ""), card=CARD)
        if cols["label"][i] not in CLASS_INDEX:
            raise DataError(f"UPMC-Food101: {sample} of {file.name} has the unknown label {cols['label'][i]!r}",
                            path=file, field="label", expected="one of the 101 official class names "
                            "(cggmlib.data.food101.CLASS_NAMES, e.g. 'apple_pie')", card=CARD)
        targets[i] = CLASS_INDEX[cols["label"][i]]
    if len(set(cols["id"])) != len(ds):
        dup = Counter(cols["id"]).most_common(1)[0][0]
        raise DataError(f"UPMC-Food101: {file.name} repeats the id {dup!r}", path=file, field="id",
                        expected="unique ids (the official loader asserts this)", card=CARD)
    return ds, targets


def _json_problem(file: Path, split: str, err: Exception) -> DataError:
    try:
        content = json.loads(file.read_text())
    except (ValueError, UnicodeDecodeError) as bad:
        return DataError(f"UPMC-Food101: {file.name} is not valid JSON ({bad})", path=file, expected=ROW, card=CARD)
    if content == []:
        return DataError(f"UPMC-Food101: the {split} split is empty", path=file, expected=ROW, card=CARD)
    return DataError(f"UPMC-Food101: {file.name} could not be read as sample rows ({err})", path=file,
                     expected=ROW, card=CARD)


def dev_split(targets: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, dev rows): `fraction` of each class goes to dev, chosen by a generator seeded `seed`."""
    rng = np.random.default_rng(seed)
    dev = []
    for c in np.unique(targets):
        rows = np.flatnonzero(targets == c)
        dev.append(rng.permutation(rows)[:int(round(fraction * len(rows)))])
    dev = np.sort(np.concatenate(dev))
    return np.setdiff1d(np.arange(len(targets)), dev), dev


class Rows:
    """Rows `rows` of a (memory-mapped) float16 array; `self[idx]` reads them as float32 tensors."""

    def __init__(self, array: np.ndarray, rows: np.ndarray):
        self.array, self.rows = array, np.asarray(rows)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def shape(self) -> tuple:
        return (len(self.rows), *self.array.shape[1:])

    def __getitem__(self, idx) -> torch.Tensor:
        rows = self.rows[np.asarray(idx, dtype=np.int64).reshape(-1)]
        return torch.from_numpy(np.asarray(self.array[rows], dtype=np.float32))


def load(path, *, batch_size: int = 64, seed: int = 0, dev_fraction: float = 0.1, split_seed: int = 0,
         bert=None, vit=None, image_norm: str = "vit", text_length: int = 50, cache_dir=None,
         device: str | None = None, feature_batch_size: int = 64, num_workers: int = 0,
         shuffle: bool = True) -> Data:
    """UPMC-Food101 from `path` (train.json, test.json, images) as cached frozen BERT/ViT tokens.

    - `dev_fraction`: share of each class of train.json held out as the validation split (seeded by
      `split_seed`, independent of `seed`); 0 validates on test as the official code does.
    - `bert`, `vit`: local Hugging Face model folders (default `path/models/bert-base-uncased` and
      `path/models/vit-base-patch16-224`); nothing is ever downloaded.
    - `image_norm`: "vit" (ViT mean/std, correct for the checkpoint) or "official" ([0, 1] pixels).
    - `cache_dir`: where features are cached (default `path/features`); `device`, `feature_batch_size`
      and `num_workers` (image decoding) only affect the one-off extraction.
    - `shuffle`: reshuffle training batches every epoch (seeded by seed, epoch); False keeps the
      official fixed order.
    """
    from . import food101_features as F

    root = Path(path)
    if not root.is_dir():
        raise DataError("UPMC-Food101: the dataset folder does not exist", path=root,
                        expected="train.json, test.json and the images they list (or run `cggm make-standin "
                                 "food101`)", card=CARD)
    if not 0 <= dev_fraction < 1:
        raise ConfigError(f"food101: dev_fraction must be in [0, 1), got {dev_fraction!r}")
    if not isinstance(text_length, int) or not 2 <= text_length <= 512:
        raise ConfigError(f"food101: text_length must be an integer in [2, 512] (official: 50), got {text_length!r}")
    if image_norm not in ("vit", "official"):
        raise ConfigError(f"food101: image_norm must be 'vit' or 'official', got {image_norm!r}")
    cache = Path(cache_dir) if cache_dir else root / "features"
    models = F.model_folders(root, bert, vit)
    splits = {split: read_split(root, split, cache / "hf_datasets") for split in ("train", "test")}
    targets = {split: t for split, (_, t) in splits.items()}
    ids = {split: ds["id"] for split, (ds, _) in splits.items()}
    train_rows, dev_rows = dev_split(targets["train"], dev_fraction, split_seed) if dev_fraction else \
        (np.arange(len(targets["train"])), None)
    if dev_rows is not None and len(dev_rows) == 0:
        raise DataError(f"UPMC-Food101: dev_fraction={dev_fraction} leaves the dev split empty",
                        path=root / "train.json", expected="more training samples per class, or dev_fraction=0",
                        card=CARD)
    if not shuffle:  # the official order: one random.Random(0) shuffle of train.json's ids
        order = list(range(len(targets["train"])))
        random.Random(0).shuffle(order)
        keep = set(train_rows.tolist())
        train_rows = np.array([i for i in order if i in keep], dtype=np.int64)
    # after every cheap check: extraction is the slow part
    feats = {split: F.cached_features(ds, root, split, models=models, image_norm=image_norm, text_length=text_length,
                                      cache=cache, device=device, batch_size=feature_batch_size,
                                      num_workers=num_workers) for split, (ds, _) in splits.items()}

    def loader(split, rows, train=False):
        rows = np.arange(len(targets[split])) if rows is None else rows
        inputs = {m: Rows(feats[split][m], rows) for m in MODALITIES}
        return TensorLoader(inputs, torch.from_numpy(targets[split][rows]), batch_size, shuffle=train and shuffle,
                            seed=seed, meta={"id": [ids[split][i] for i in rows.tolist()]})

    train = loader("train", train_rows, train=True)
    val = loader("train", dev_rows) if dev_rows is not None else loader("test", None)
    test = loader("test", None)
    dims = {m: int(feats["train"][m].shape[-1]) for m in MODALITIES}
    present = sorted({int(t) for split in targets.values() for t in np.unique(split)})
    info = {"sizes": {"train": len(train_rows), "val": len(val.target), "test": len(test.target)},
            "classes_present": len(present), "features": str(feats["train"]["dir"]),
            "models": {k: str(v) for k, v in models.items()}, "image_norm": image_norm, "text_length": text_length,
            "validation": f"dev split: {dev_fraction:.0%} of each class of train.json (split_seed={split_seed})"
                          if dev_rows is not None else "test split (as the official code: test-set selection)",
            "source": str(root), "card": CARD}
    return Data("food101", train, val, test, Classification(len(CLASS_NAMES)), dims,
                standin=is_standin(root), info=info)


def check(path, full: bool = False) -> DoctorReport:
    """What `cggm doctor` shows for UPMC-Food101: files, labels, the header of every image (`full`: every
    image decoded, with a progress bar), model folders and whether the feature cache is fresh."""
    import tempfile

    from . import food101_features as F

    root = Path(path)
    report = DoctorReport("food101", root)
    report.add("folder", str(root), root.is_dir(), f"{root} does not exist: put train.json, test.json and the "
               f"images there, or run `cggm make-standin food101` (see {CARD})")
    if not root.is_dir():
        return report
    report.add("stand-in", "yes (synthetic, STANDIN.json)" if is_standin(root) else "no")
    splits, counts = {}, {"headers": 0, "decoded": 0, "files": 0}
    with tempfile.TemporaryDirectory() as hf_cache:
        for split in ("train", "test"):
            try:
                ds, targets = read_split(root, split, Path(hf_cache))
            except DataError as err:
                report.add(f"{split}.json", "unreadable", False, str(err))
                continue
            splits[split] = ds
            report.add(f"{split}.json samples", len(ds))
            report.add(f"{split} classes present", f"{len(np.unique(targets))} of 101")
            paths = [F.image_path(root, p) for p in ds["img_path"]]
            missing = [p for p in paths if not p.is_file()]
            report.add(f"{split} images found", f"{len(paths) - len(missing)} of {len(paths)}", not missing,
                       f"{len(missing)} images listed in {split}.json are missing, e.g. {missing[0]} (field img_path; "
                       f"see {CARD})" if missing else None)
            read = F.image_problem if full else F.header_problem
            bad = []
            for i, p in enumerate(scan_bar(paths, f"{split} images", full)):
                if p.is_file():
                    why = read(p)
                    if why:
                        bad.append(f"sample {i} (id {ds['id'][i]!r}) {p}: {why}")
            present = len(paths) - len(missing)
            counts["files"] += present
            counts["decoded" if full else "headers"] += present
            report.add(f"{split} images {'decode' if full else 'headers readable'}", f"{present - len(bad)} of {present}",
                       not bad, f"{len(bad)} unreadable image(s) in {split}.json (field img_path), e.g. "
                                f"{'; '.join(bad[:3])}; replace them (see {CARD})" if bad else None)
    try:
        models = F.model_folders(root, None, None)
        report.add("model folders", ", ".join(str(p) for p in models.values()))
    except DataError as err:
        report.add("model folders", "missing", False, str(err))
    for folder in sorted(p.parent for p in (root / "features").glob("*/train.json")):
        for split, ds in splits.items():
            status, changed = F.cache_status(root, ds, split, folder)
            report.add(f"feature cache {folder.name} {split}", status + {
                "stale": f": {len(changed)} source file(s) changed since it was built (e.g. "
                         f"{', '.join(changed[:2])}); recomputed on the next load",
                "unkeyed": ": written before image checksums; the next load records them"}.get(status, ""))
    report.add("verified", f"checked headers of {counts['headers'] or counts['decoded']}/{counts['files']} image "
               f"files; decoded {counts['decoded']}" + ("" if full else " (cggm doctor --full decodes every image)"))
    return report
