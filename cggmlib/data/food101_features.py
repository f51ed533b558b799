"""Frozen BERT / ViT token features for UPMC-Food101, computed once and cached on disk.

The official trainer (zrguo/CGGM@21e428c src/foodtrain.py) runs the frozen `ViTModel` and `BertModel` on
every batch of every epoch and keeps `last_hidden_state`: image (B, 197, 768), text (B, 50, 768).
Since both are frozen and evaluated under `no_grad`, the same tokens can be computed once; we store
them as float16 `.npy` files under `cache/<key>/<split>.{image,text}.npy`, where `key` hashes the
model folders' fingerprints and the options. Files are written to a temporary name and renamed, and a
manifest `<split>.json` (holding the SHA-256 of the split's JSON file and a digest of every image, see
`image_digests`) is written last, so a killed extraction never leaves a cache that looks complete, and
an image changed after extraction makes the cache stale (recomputed, with a message saying so). Data card: data_cards/food101.md.

Reference code: zrguo/CGGM@21e428c datasets/FOODDataset.py (tokenisation: `' '.join(text_tokens)`, padding
and truncation to 50; images: Resize 224 + ToTensor), zrguo/CGGM@21e428c src/foodtrain.py.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from ..files import atomic_write_json
from .base import card

CARD = card("food101")
VERSION = 1
HUB = {"bert": ("google-bert/bert-base-uncased", "bert-base-uncased"),
       "vit": ("google/vit-base-patch16-224", "vit-base-patch16-224")}


def model_folders(root: Path, bert=None, vit=None) -> dict[str, Path]:
    """The local BERT and ViT folders (defaults under `root/models/`); DataError saying how to get them."""
    out = {}
    for name, given in (("bert", bert), ("vit", vit)):
        repo, folder = HUB[name]
        path = Path(given) if given else root / "models" / folder
        if not (path / "config.json").is_file():
            raise DataError(
                f"UPMC-Food101: the {name.upper()} model folder is missing or has no config.json (features are "
                "computed from local weights; nothing is downloaded)", path=path, field=name,
                expected=f"a Hugging Face model folder; on a connected machine run `huggingface-cli download {repo} "
                     f"--local-dir {folder}`, copy that folder to {path} or pass {name}=PATH", card=CARD)
        out[name] = path
    return out


def fingerprint(folder: Path) -> str:
    """SHA-256 over each top-level file's name, size, first and last MiB (weights are hundreds of MB)."""
    h = hashlib.sha256()
    for p in sorted(folder.iterdir()):
        if p.is_file() and not p.name.startswith("."):
            size = p.stat().st_size
            h.update(f"{p.name}:{size}".encode())
            with open(p, "rb") as f:
                h.update(f.read(2**20))
                if size > 2**21:
                    f.seek(-2**20, 2)
                    h.update(f.read(2**20))
    return h.hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(2**20), b""):
            h.update(chunk)
    return h.hexdigest()


def cache_key(models: dict[str, Path], image_norm: str, text_length: int) -> str:
    spec = {"bert": fingerprint(models["bert"]), "vit": fingerprint(models["vit"]), "image_norm": image_norm,
            "text_length": text_length, "dtype": "float16", "version": VERSION}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


HASH_ALL_LIMIT = 2 * 2**30
"""image trees up to this many bytes are keyed by the SHA-256 of every image; larger ones by each
image's size and mtime_ns (a full read of a 100k-image tree would cost minutes on every load)"""


def image_digests(paths: list[Path], root: Path) -> dict[str, str]:
    """{image path relative to root: "sha256:<hex16>" or "stat:<size>:<mtime_ns>"}, the key of the images
    a feature cache was computed from (missing files: "missing")."""
    stats = {}
    for p in paths:
        try:
            stats[p] = p.stat()
        except FileNotFoundError:
            stats[p] = None
    total = sum(st.st_size for st in stats.values() if st is not None)
    out = {}
    for p, st in stats.items():
        rel = os.path.relpath(p, root)
        if st is None:
            out[rel] = "missing"
        elif total <= HASH_ALL_LIMIT:
            out[rel] = "sha256:" + file_sha256(p)[:16]
        else:
            out[rel] = f"stat:{st.st_size}:{st.st_mtime_ns}"
    return out


def stale_images(manifest: dict, digests: dict[str, str]) -> list[str] | None:
    """Images whose digest differs from the cache manifest's ([] when fresh; None: manifest lacks them)."""
    before = manifest.get("images")
    if before is None:
        return None
    return sorted(k for k in set(before) | set(digests) if before.get(k) != digests.get(k))


def cache_status(root: Path, ds, split: str, folder: Path) -> tuple[str, list[str] | None]:
    """("fresh" | "stale" | "absent" | "unkeyed", changed images) of the feature cache `folder` for one
    split; "unkeyed": written by an earlier version, without image digests."""
    try:
        manifest = json.loads((folder / f"{split}.json").read_text())
    except (OSError, ValueError):
        return "absent", []
    if manifest.get("source_sha256") != file_sha256(root / f"{split}.json"):
        return "stale", [f"{split}.json"]
    changed = stale_images(manifest, image_digests([image_path(root, p) for p in ds["img_path"]], root))
    if changed is None:
        return "unkeyed", []
    return ("stale" if changed else "fresh"), changed


def cached_features(ds, root: Path, split: str, *, models, image_norm, text_length, cache: Path, device=None,
                    batch_size: int = 64, num_workers: int = 0) -> dict:
    """{"image": (N, 197, d) float16 memmap, "text": (N, L, d) float16 memmap, "dir": cache folder}.

    Reuses the cache when its manifest matches the split file's SHA-256 and the digests of every image
    (`image_digests`); otherwise extracts, and says why when an existing cache is stale. One process
    extracts at a time (a lock beside the cache); temporary files of killed extractions are removed.
    """
    from .base import disk_errors, pid_alive, writer_lock

    folder = cache / cache_key(models, image_norm, text_length)
    manifest = folder / f"{split}.json"
    with disk_errors(folder), writer_lock(folder / f".{split}.lock", f"the {split} features in {folder}"):
        for tmp in folder.glob(f".{split}.*.npy.tmp"):
            if not pid_alive(int(tmp.name.split(".")[-3])):
                tmp.unlink(missing_ok=True)
        status, changed = cache_status(root, ds, split, folder)
        if status == "unkeyed":  # recomputing would cost hours on the real data: record the digests now
            print(f"UPMC-Food101: the cached {split} features in {folder} predate image checksums; recording "
                  f"the current images' digests (if you changed images since they were computed, delete {folder})",
                  file=sys.stderr, flush=True)
            manifest_data = json.loads(manifest.read_text())
            atomic_write_json(manifest, manifest_data | {
                "images": image_digests([image_path(root, p) for p in ds["img_path"]], root)})
        elif status != "fresh":
            if status == "stale":
                print(f"UPMC-Food101: the cached {split} features in {folder} are stale: {len(changed)} source "
                      f"file(s) changed since they were computed (e.g. {', '.join(changed[:3])}); recomputing them",
                      file=sys.stderr, flush=True)
            digests = image_digests([image_path(root, p) for p in ds["img_path"]], root)
            _extract(ds, root, split, folder, models=models, image_norm=image_norm, text_length=text_length,
                     device=device, batch_size=batch_size, num_workers=num_workers)
            atomic_write_json(manifest, {"split": split, "source_sha256": file_sha256(root / f"{split}.json"),
                                         "samples": len(ds), "images": digests,
                                         "models": {k: str(v) for k, v in models.items()}, "image_norm": image_norm,
                                         "text_length": text_length, "dtype": "float16"})
    out = {m: np.load(folder / f"{split}.{m}.npy", mmap_mode="r") for m in ("image", "text")}
    for m, x in out.items():
        if len(x) != len(ds):
            raise DataError(f"UPMC-Food101: the cached {m} features hold {len(x)} rows for {len(ds)} samples; "
                            f"delete {folder} to recompute them", path=folder / f"{split}.{m}.npy", card=CARD)
    return out | {"dir": folder}


def image_path(root: Path, img_path: str) -> Path:
    """`root / img_path`; an absolute path that does not exist (JSON files made on another machine, as
    the MMBT-style script writes them) is re-rooted at its last `images/` component under `root`."""
    path, given = root / img_path, Path(img_path)
    if not path.exists() and given.is_absolute() and "images" in given.parts:
        at = len(given.parts) - 1 - given.parts[::-1].index("images")
        moved = root.joinpath(*given.parts[at:])
        if moved.exists():
            return moved
    return path


def decode_image(path: Path):
    """(RGB PIL image, None), or (None, why `path` is not a readable image)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.convert("RGB"), None
    except FileNotFoundError:
        return None, "the file does not exist"
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        return None, f"it cannot be decoded ({err})"


def header_problem(path: Path) -> str | None:
    """Why `path` has no readable image header (format and size; no pixel is decoded), or None."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            if im.size[0] < 1 or im.size[1] < 1:
                return f"its header gives the size {im.size}"
    except FileNotFoundError:
        return "the file does not exist"
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        return f"its header cannot be read ({err})"
    return None


def image_problem(path: Path) -> str | None:
    """Why `path` is not a readable image, or None."""
    return decode_image(path)[1]


class _Samples(torch.utils.data.Dataset):
    """Tokenised text and processed pixels of one split, for the extraction pass."""

    def __init__(self, ds, root, tokenizer, processor, image_norm, text_length):
        self.texts = [" ".join(t) for t in ds["text_tokens"]]
        self.paths, self.ids = [image_path(root, p) for p in ds["img_path"]], ds["id"]
        self.tokenizer, self.processor, self.norm, self.length = tokenizer, processor, image_norm, text_length

    def __len__(self):
        return len(self.texts)

    def __getitem__(self, i):
        image, problem = decode_image(self.paths[i])
        if problem:
            raise DataError(f"UPMC-Food101: the image of sample {i} (id {self.ids[i]!r}) is unreadable: {problem}",
                            path=self.paths[i], field="img_path", expected="a readable JPEG/PNG image", card=CARD)
        pixels = self.processor(image, do_normalize=self.norm == "vit", return_tensors="pt")["pixel_values"][0]
        text = self.tokenizer(self.texts[i], add_special_tokens=True, padding="max_length", max_length=self.length,
                              truncation=True, return_tensors="pt")
        return pixels, {k: v[0] for k, v in text.items()}


def _extract(ds, root, split, folder, *, models, image_norm, text_length, device, batch_size, num_workers):
    """Run the frozen ViT and BERT over the split and write the token features (atomic renames)."""
    import transformers as T

    verbosity = T.logging.get_verbosity()
    T.logging.set_verbosity_error()
    T.logging.disable_progress_bar()
    try:
        tokenizer = T.BertTokenizerFast.from_pretrained(models["bert"])
        bert = T.BertModel.from_pretrained(models["bert"], add_pooling_layer=False)
        processor = (getattr(T, "ViTImageProcessorPil", None) or T.ViTImageProcessor).from_pretrained(models["vit"])
        vit = T.ViTModel.from_pretrained(models["vit"], add_pooling_layer=False)
    except (OSError, ValueError) as err:
        raise DataError(f"UPMC-Food101: the model folders could not be loaded ({err})",
                        path=f"{models['bert']} / {models['vit']}", expected="complete Hugging Face folders of "
                        "bert-base-uncased and vit-base-patch16-224 (weights, config, tokenizer/preprocessor)",
                        card=CARD) from None
    finally:
        T.logging.set_verbosity(verbosity)
        T.logging.enable_progress_bar()
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    bert, vit = bert.eval().to(device), vit.eval().to(device)
    n = len(ds)
    n_patches = (vit.config.image_size // vit.config.patch_size) ** 2 + 1
    shapes = {"image": (n, n_patches, vit.config.hidden_size), "text": (n, text_length, bert.config.hidden_size)}
    folder.mkdir(parents=True, exist_ok=True)
    tmp = {m: folder / f".{split}.{m}.{os.getpid()}.npy.tmp" for m in shapes}
    try:
        out = {m: np.lib.format.open_memmap(tmp[m], mode="w+", dtype=np.float16, shape=s) for m, s in shapes.items()}
        for m in shapes:  # reserve the space now: a full disk under a memory map kills the process (SIGBUS)
            with open(tmp[m], "r+b") as f:
                os.posix_fallocate(f.fileno(), 0, os.path.getsize(tmp[m]))
        loader = torch.utils.data.DataLoader(_Samples(ds, root, tokenizer, processor, image_norm, text_length),
                                             batch_size=batch_size, num_workers=num_workers)
        start = 0
        with torch.inference_mode():
            for pixels, text in loader:
                end = start + len(pixels)
                out["image"][start:end] = vit(pixel_values=pixels.to(device)).last_hidden_state.half().cpu().numpy()
                out["text"][start:end] = bert(input_ids=text["input_ids"].to(device),
                                              attention_mask=text["attention_mask"].to(device),
                                              token_type_ids=text["token_type_ids"].to(device)
                                              ).last_hidden_state.half().cpu().numpy()
                start = end
        for x in out.values():
            x.flush()
        out.clear()  # close the memory maps before the rename
        for m in shapes:
            os.replace(tmp[m], folder / f"{split}.{m}.npy")
    finally:
        for p in tmp.values():
            p.unlink(missing_ok=True)
