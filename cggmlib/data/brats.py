"""BraTS 2021 Task 1 (Baid et al. 2021; Menze et al. 2015): 4-class brain-tumour segmentation of 2-D
axial slices from four MRI modalities, as CGGM uses it (Guo et al., NeurIPS 2024, Sec. 4.1).
Data card: data_cards/brats2021.md.

Reads the challenge layout `DATA_ROOT/brats2021/BraTS2021_<id>/BraTS2021_<id>_<m>.nii.gz`, m in
{flair, t1, t1ce, t2, seg}, through a preprocessing cache (`brats_cache`) and yields batches of
160 x 160 slices (`brats_slices`): inputs {"flair", "t1ce", "t1", "t2"} each (B, 1, 160, 160) float32,
target (B, 160, 160) int64 with label 4 remapped to 3, `meta["case"]` for per-volume Dice.

Reference code: zrguo/CGGM@21e428c datasets/BratsDataset.py, zrguo/CGGM@21e428c datasets/dataloader.py.

Deviations from the official code (each in the data card): NIfTI instead of the authors' unpublished
h5 files, with our own normalisation (z-score on brain voxels); a committed hash-rule case split (the
official split is unknown); evaluation slices fixed by a seed (official: redrawn at every evaluation)
or every slice (`eval_protocol="all"`); training order reshuffled per epoch (official: directory order).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..errors import ConfigError, DataError
from ..files import atomic_write_json
from ..tasks import Segmentation
from . import brats_cache as C
from .base import Data, DoctorReport, card, scan_bar
from .brats_slices import SliceLoader
from .standins import is_standin

CARD = card("brats2021")
MODALITIES = C.MODALITIES
SPLIT_FILE = Path(__file__).with_name("brats_split.json")
SPLITS = ("train", "val", "test")
PROTOCOLS = ("official", "all")
TRAIN_SLICES = ("official", "tumour", "all")


def split_manifest(path=None) -> dict:
    """The committed split rule (cggmlib/data/brats_split.json unless `path`)."""
    return json.loads(Path(path or SPLIT_FILE).read_text())


def assign(case_id: str, manifest: dict) -> str:
    """train / val / test of one case under the manifest's rule (explicit overrides first)."""
    if case_id in manifest.get("overrides", {}):
        return manifest["overrides"][case_id]
    u = int(hashlib.sha256(f"{manifest['seed']}:{case_id}".encode()).hexdigest()[:16], 16) / 2**64
    edge = 0.0
    for split in SPLITS:
        edge += manifest["fractions"][split]
        if u < edge:
            return split
    return SPLITS[-1]


def resolve_split(case_ids, manifest: dict) -> dict[str, list[str]]:
    out = {s: [] for s in SPLITS}
    for case in sorted(case_ids):
        out[assign(case, manifest)].append(case)
    return out


def _cases(root: Path) -> list[Path]:
    if not root.is_dir():
        raise DataError("BraTS 2021: the dataset folder does not exist", path=root,
                        expected="case folders BraTS2021_<id>/ with flair, t1, t1ce, t2 and seg .nii.gz files "
                                 "(or run `cggm make-standin brats2021`)", card=CARD)
    cases = C.find_cases(root)
    if not cases:
        raise DataError("BraTS 2021: no case folder found", path=root,
                        expected="folders named BraTS2021_<id> (here or one level down)", card=CARD)
    return cases


def load(path, *, batch_size: int = 64, seed: int = 0, eval_protocol: str = "official",
         train_slices: str = "official", augment: bool = True, shuffle: bool = True, sample_seed: int = 0,
         slice_limit: int | None = 128, num_workers: int = 0, cache_dir=None, split_file=None) -> Data:
    """BraTS 2021 from `path` as 2-D slices; the first call preprocesses every case into the cache.

    - `eval_protocol`: "official" (one tumour slice per case, fixed by `sample_seed`) or "all" (every slice).
    - `train_slices`: "official" (one random tumour slice per case per epoch), "tumour" or "all".
    - `augment`: the official RandomRotFlip + Gaussian noise on training slices.
    - `shuffle`: reshuffle training samples every epoch (seeded by seed, epoch); False keeps case order.
    - `slice_limit`: the official draw only considers slices below 128; None lifts it.
    - `num_workers`: processes for preprocessing and DataLoader workers; `cache_dir` (default
      `path/cache`); `split_file`: another split manifest in the format of brats_split.json.
    """
    if eval_protocol not in PROTOCOLS:
        raise ConfigError(f"brats2021: eval_protocol must be one of {PROTOCOLS}, got {eval_protocol!r}")
    if train_slices not in TRAIN_SLICES:
        raise ConfigError(f"brats2021: train_slices must be one of {TRAIN_SLICES}, got {train_slices!r}")
    root = Path(path)
    cases = _cases(root)
    manifest = split_manifest(split_file)
    split = resolve_split([c.name for c in cases], manifest)
    for name in SPLITS:
        if not split[name]:
            raise DataError(f"BraTS 2021: the {name} split is empty: the committed split rule assigns none of the "
                            f"{len(cases)} cases found to it", path=root, field=name,
                            expected=f"enough cases for every split (the rule sends about "
                                     f"{manifest['fractions'][name]:.0%} of cases to {name}), or your own split: "
                                     f"split_file=PATH (--data-opt split_file=PATH) in the format of "
                                     f"cggmlib/data/brats_split.json, e.g. with 'overrides'", card=CARD)
    cache = (Path(cache_dir) if cache_dir else root / "cache") / C.spec_key()
    metas = {m["case"]: m for m in C.prepare(cases, cache, workers=num_workers)}
    resolved = {"rule": {k: manifest[k] for k in ("rule", "seed", "fractions", "version")}, **split}
    if not (cache / "split.json").is_file() or json.loads((cache / "split.json").read_text()) != resolved:
        atomic_write_json(cache / "split.json", resolved)
    common = dict(batch_size=batch_size, seed=seed, sample_seed=sample_seed, slice_limit=slice_limit,
                  num_workers=num_workers)
    train = SliceLoader([metas[c] for c in split["train"]], slices=train_slices, train=True, shuffle=shuffle,
                        augment=augment, **common)
    val, test = (SliceLoader([metas[c] for c in split[s]], slices=eval_protocol, **common) for s in ("val", "test"))
    shapes = sorted({tuple(m["shape"]) for m in metas.values()})
    info = {"cases": {s: len(split[s]) for s in SPLITS},
            "sizes": {"train": train.num_samples, "val": val.num_samples, "test": test.num_samples},
            "eval_protocol": eval_protocol, "train_slices": train_slices, "augment": augment,
            "cases_without_tumour": sorted(c for c, m in metas.items() if not m["tumour_slices"]),
            "volume_shapes": [list(s) for s in shapes], "cache": str(cache), "split": str(cache / "split.json"),
            "source": str(root), "card": CARD}
    return Data("brats2021", train, val, test, Segmentation(), {m: (1, C.CROP, C.CROP) for m in MODALITIES},
                standin=is_standin(root), info=info)


def check(path, full: bool = False) -> DoctorReport:
    """What `cggm doctor` shows for BraTS 2021: cases, files, split, the header of every volume (shape,
    and for .nii.gz the stored length against the header's), and with `full` every volume decoded and
    every label checked (progress bar); then how many cases the cache holds fresh."""
    root = Path(path)
    report = DoctorReport("brats2021", root)
    try:
        cases = _cases(root)
    except DataError as err:
        report.add("case folders", 0, False, str(err))
        return report
    report.add("stand-in", "yes (synthetic, STANDIN.json)" if is_standin(root) else "no")
    report.add("case folders", len(cases), True)
    complete, shapes, missing, files_seen = [], {}, [], 0
    for c in cases:
        try:
            files = C.case_files(c)
        except DataError as err:
            missing.append(str(err))
            continue
        complete.append(c)
        files_seen += len(files)
        found = {}
        for m, p in files.items():
            shape, problem = C.header(p)
            if problem:
                missing.append(f"{c.name}: {p.name} {problem}; download the case again (see {CARD})")
            else:
                found[m] = shape
        if len(found) == len(files):
            shapes[c.name] = set(found.values())
    report.add("cases with all five readable headers", f"{len(shapes)} of {len(cases)}", not missing,
               f"{len(missing)} case(s) incomplete or damaged: {'; '.join(missing[:3])}" if missing else None)
    odd = sorted(n for n, s in shapes.items() if s != {C.STANDARD_SHAPE})
    report.add("volumes 240 x 240 x 155", f"{len(shapes) - len(odd)} of {len(shapes)}" +
               (f" (others, e.g. {odd[0]}: {sorted(shapes[odd[0]])})" if odd else ""))
    split = resolve_split([c.name for c in cases], split_manifest())
    report.add("split (committed rule)", ", ".join(f"{s} {len(split[s])}" for s in SPLITS),
               all(split.values()), None if all(split.values()) else
               f"a split is empty with these {len(cases)} cases: the committed rule sends about 70/10/20% of "
               f"cases to train/val/test, so add cases (about 20 or more) or pass a split_file in the format of "
               f"cggmlib/data/brats_split.json (load_data(..., split_file=P), or --data-opt split_file=P); see {CARD}")
    decoded = 0
    if full:
        failed = []
        for c in scan_bar(complete, "BraTS cases", True):
            try:
                C.read_case(c)
                decoded += 1
            except DataError as err:
                failed.append(str(err))
        report.add("cases decoded (every voxel, labels in {0,1,2,4})", f"{decoded} of {len(complete)}", not failed,
                   f"{len(failed)} case(s) failed: " + "\n".join(failed[:5]) if failed else None)
    cache = root / "cache" / C.spec_key()
    fresh = sum(C.cached_meta(c, cache / c.name) is not None for c in complete)
    stale = sum((cache / c.name / "meta.json").is_file() for c in complete) - fresh
    report.add("preprocessed cases in cache", f"{fresh} of {len(cases)} fresh" +
               (f", {stale} stale (their files changed; preprocessed again on the next load)" if stale else "") +
               f" ({cache})")
    report.add("verified", f"checked headers of {files_seen}/{files_seen} files; decoded {decoded * len(C.FILES)}"
               + ("" if full else " (cggm doctor --full decodes every volume and checks every label)"))
    return report
