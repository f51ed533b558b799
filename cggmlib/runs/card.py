"""The run card (run_card.json): commit, configuration key, seed, package versions, device, wall time and
the checksums of the data files the run read."""
from __future__ import annotations

import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path

import torch

from .checksums import data_checksums


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def package_versions() -> dict[str, str]:
    names = ["cggmlib", "torch", "numpy", "pandas", "monai", "nibabel", "datasets", "transformers", "h5py"]
    out = {"python": platform.python_version()}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            pass
    return out


def run_card(cfg, data=None, wall_time_s: float | None = None, extra: dict | None = None) -> dict:
    """Provenance of one run: commit, configuration hash, seed, versions, device, time, data checksums."""
    device = cfg.device
    if device.startswith("cuda") and torch.cuda.is_available():
        device = f"{device} ({torch.cuda.get_device_name()})"
    card = {"git_commit": git_commit(), "config_key": cfg.key(), "seed": cfg.seed,
            "packages": package_versions(), "device": device, "threads": torch.get_num_threads(),
            "wall_time_s": wall_time_s, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "standin": bool(getattr(data, "standin", False)),
            "data_files": (getattr(data, "info", {}) or {}).get("checksums", {})}
    if not card["data_files"] and cfg.dataset != "custom":
        try:  # every file the loader reads (derived caches excluded)
            card["data_files"], card["data_receipt"] = data_checksums(cfg.dataset, cfg.data_root)
        except OSError as err:
            card["data_receipt"] = f"checksums not computed: {err}"
    return card | (extra or {})


__all__ = ["git_commit", "package_versions", "run_card"]
