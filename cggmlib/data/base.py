"""The data contracts: `Batch` (inputs keyed by modality), `Data` (three splits and a task) and an
in-memory loader with seeded, per-epoch shuffling that can be sharded across processes."""
from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch

from ..errors import CGGMError, ConfigError, DataError, ResultsError
from ..files import describe_os_error

CARDS = Path(__file__).resolve().parents[2] / "data_cards"


ABSURD = 1e6
"""a feature value with |x| above this is reported as the data's fault (by `cggm doctor`, the loaders'
warnings and the non-finite stop of training): no published feature set of these datasets comes near
it, while one such value (e.g. a float32 3e38) overflows the first layer"""


def limit_text(x: float) -> str:
    """1e6 for 1000000.0: how thresholds read in messages."""
    return f"{x:.0e}".replace("e+0", "e").replace("e+", "e")


def absurd_values(x, limit: float = ABSURD) -> tuple[int, int | None, float]:
    """(number of finite values with |x| > limit, first sample (index on axis 0) holding one, largest
    finite |x|) of a numpy array or tensor whose first axis is samples."""
    import numpy as np

    a = np.abs(np.asarray(x.detach().cpu().float() if torch.is_tensor(x) else x, dtype=np.float64))
    a = np.where(np.isfinite(a), a, 0.0)
    big = a > limit
    count = int(big.sum())
    first = int(np.flatnonzero(big.reshape(len(a), -1).any(1))[0]) if count else None
    return count, first, float(a.max()) if a.size else 0.0


def scan_bar(items, desc: str, enabled: bool = True):
    """A tqdm progress bar (on stderr) over a long file scan, e.g. `cggm doctor --full`."""
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, disable=not enabled, mininterval=1.0, leave=False)


def card(name: str) -> str:
    """Path of a dataset's data card, for error messages."""
    return f"data_cards/{name}.md"


@dataclass
class Batch:
    """One mini-batch: `inputs[m]` is modality m's tensor (B, ...); `target` the labels (B, ...)."""

    inputs: dict[str, torch.Tensor]
    target: torch.Tensor
    meta: dict[str, Any] = field(default_factory=dict)
    """per-sample extras that are not model inputs, e.g. {"case": [...]} for per-volume Dice"""

    def to(self, device, non_blocking: bool = False) -> "Batch":
        return Batch({m: x.to(device, non_blocking=non_blocking) for m, x in self.inputs.items()},
                     self.target.to(device, non_blocking=non_blocking), self.meta)

    def pin_memory(self) -> "Batch":
        return Batch({m: x.pin_memory() for m, x in self.inputs.items()}, self.target.pin_memory(), self.meta)

    def __len__(self) -> int:
        return len(self.target)


@dataclass
class Data:
    """A dataset ready for training: loaders for three splits, the task and modality facts."""

    name: str
    train: Iterable[Batch]
    val: Iterable[Batch]
    test: Iterable[Batch]
    task: Any
    """a cggmlib.tasks task: loss, CGGM's per-batch metric, evaluation metrics"""
    input_dims: dict[str, Any]
    """modality -> per-step feature size (int) or input shape (tuple), in modality order"""
    standin: bool = False
    """True when the files are a synthetic stand-in written by `cggm make-standin`, not the real data"""
    info: dict = field(default_factory=dict)
    """sizes, source, notes and checks (e.g. non-finite values replaced) for reports and `doctor`"""

    @property
    def modalities(self) -> list[str]:
        return list(self.input_dims)

    @property
    def num_outputs(self) -> int:
        return self.task.num_outputs


@dataclass
class DoctorReport:
    """What `cggm doctor` prints for one dataset: a table of checks and the problems found.

    Each row: {"check": what was checked, "value": what was found, "ok": bool}. Each problem is one
    actionable sentence naming the file, the field and what was expected (and the data card).
    """

    dataset: str
    path: Path
    rows: list[dict] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def add(self, check: str, value, ok: bool = True, problem: str | None = None) -> None:
        self.rows.append({"check": check, "value": value, "ok": bool(ok)})
        if not ok and problem:
            self.problems.append(problem)

    @property
    def ok(self) -> bool:
        return not self.problems


def checksums(paths, root=None, full_hash_limit: int = 256 * 2**20) -> dict[str, str]:
    """{relative path: "sha256:<hex>"} of data files, for run cards (reviewers verify inputs).

    Files larger than `full_hash_limit` bytes are fingerprinted by size plus the SHA-256 of their
    first and last MiB ("fp:<hex>"), so a 1,251-case BraTS tree does not take minutes to hash.
    """
    import hashlib

    out = {}
    for p in sorted(Path(x) for x in paths):
        h, size = hashlib.sha256(), p.stat().st_size
        with open(p, "rb") as f:
            if size <= full_hash_limit:
                for chunk in iter(lambda: f.read(2**20), b""):
                    h.update(chunk)
                tag = "sha256"
            else:
                h.update(str(size).encode())
                h.update(f.read(2**20))
                f.seek(-2**20, 2)
                h.update(f.read(2**20))
                tag = "fp"
        out[str(p.relative_to(root) if root else p)] = f"{tag}:{h.hexdigest()}"
    return out


def collate(samples: list[tuple[dict, torch.Tensor, dict]]) -> Batch:
    """Stack a list of (inputs, target, meta) samples into one Batch."""
    inputs = {m: torch.stack([s[0][m] for s in samples]) for m in samples[0][0]}
    target = torch.stack([torch.as_tensor(s[1]) for s in samples])
    meta = {k: [s[2][k] for s in samples] for k in (samples[0][2] if len(samples[0]) > 2 else {})}
    return Batch(inputs, target, meta)


class TensorLoader:
    """Mini-batches of in-memory tensors, without per-sample collation.

    Shuffling is seeded by (seed, epoch): call `set_epoch(e)` before iterating, so a resumed run sees
    the same order as an uninterrupted one. `shard(rank, world_size)` keeps every world_size-th
    sample of each epoch's order, for distributed data parallel training.
    """

    def __init__(self, inputs: dict[str, torch.Tensor], target: torch.Tensor, batch_size: int,
                 shuffle: bool = False, seed: int = 0, drop_last: bool = False, meta: dict | None = None):
        n = len(target)
        for m, x in inputs.items():
            if len(x) != n:
                raise ValueError(f"modality {m!r} has {len(x)} samples but the target has {n}")
        self.inputs, self.target, self.meta = inputs, target, meta or {}
        self.batch_size, self.shuffle, self.seed, self.drop_last = batch_size, shuffle, seed, drop_last
        self.epoch, self.rank, self.world_size = 0, 0, 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def shard(self, rank: int, world_size: int) -> "TensorLoader":
        self.rank, self.world_size = rank, world_size
        return self

    @property
    def num_samples(self) -> int:
        return len(self.target)

    def _order(self) -> torch.Tensor:
        n = len(self.target)
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        if self.world_size > 1:
            usable = n - n % self.world_size
            order = order[:usable][self.rank::self.world_size]
        return order

    def __len__(self) -> int:
        n = len(self._order())
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        order = self._order()
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            if self.drop_last and len(idx) < self.batch_size:
                return
            meta = {k: [v[i] for i in idx.tolist()] for k, v in self.meta.items()}
            meta["index"] = idx  # sample ids within the split (QMF keeps per-sample loss histories)
            yield Batch({m: x[idx] for m, x in self.inputs.items()}, self.target[idx], meta)


def split_indices(n: int, fractions: tuple[float, float, float], seed: int,
                  stratify: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Seeded train/val/test index split; with `stratify`, each class is split in the same proportions."""
    g = torch.Generator().manual_seed(seed)
    groups = [torch.arange(n)] if stratify is None else [
        (stratify == c).nonzero().flatten() for c in torch.unique(stratify)]
    parts: list[list[torch.Tensor]] = [[], [], []]
    for idx in groups:
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_train = round(fractions[0] * len(idx))
        n_val = round(fractions[1] * len(idx))
        for k, chunk in enumerate((idx[:n_train], idx[n_train:n_train + n_val], idx[n_train + n_val:])):
            parts[k].append(chunk)
    return tuple(torch.sort(torch.cat(p)).values for p in parts)


class Ragged:
    """Variable-length sequences (T_i, d...) stored flat; `ragged[idx]` zero-pads the selected ones at
    the end to their longest (at least `min_len`, at least 1), so a `TensorLoader` whose inputs are
    `Ragged` pads per batch (IEMOCAP utterances of 5 to 1,000+ frames)."""

    def __init__(self, seqs: list[torch.Tensor], min_len: int = 0):
        self.lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
        self.offsets = torch.cumsum(self.lengths, 0) - self.lengths
        self.flat = torch.cat(list(seqs)) if len(seqs) else torch.zeros(0)
        self.min_len = int(min_len)

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def shape(self) -> tuple:
        """(N, longest T, d...) — the shape of `self[all]`."""
        return (len(self), int(self.lengths.max()) if len(self) else 0, *self.flat.shape[1:])

    def __getitem__(self, idx) -> torch.Tensor:
        idx = torch.as_tensor(idx).reshape(-1)
        lens = self.lengths[idx]
        longest = max(int(lens.max()) if len(idx) else 0, self.min_len, 1)
        out = self.flat.new_zeros((len(idx), longest, *self.flat.shape[1:]))
        for row, (start, n) in enumerate(zip(self.offsets[idx].tolist(), lens.tolist())):
            out[row, :n] = self.flat[start:start + n]
        return out


def check_options(dataset: str, options: dict, known) -> None:
    """Raise ConfigError for a loader option not in `known` (a typo must not pass silently)."""
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ConfigError(f"{dataset}: unknown data option(s) {unknown}; the options are {sorted(known)} "
                          f"(see {card(dataset)})")


def disk_full(err: BaseException) -> OSError | None:
    """The "no space left" OSError behind `err` (itself, or in its cause chain: libraries wrap it), or None."""
    import errno

    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return err
        if "No space left on device" in str(err) or "os error 28" in str(err):  # h5py, safetensors: text only
            return OSError(errno.ENOSPC, "No space left on device")
        err = err.__cause__ or err.__context__
    return None


@contextlib.contextmanager
def disk_errors(path):
    """Turn an operating-system error while writing under `path` into `ResultsError` saying what to do
    (a full disk, also when a library wraps it: "disk full while writing <path>: free space and rerun");
    cggmlib errors pass through."""
    try:
        yield
    except CGGMError:
        raise
    except Exception as err:
        cause = err if isinstance(err, OSError) else disk_full(err)
        if cause is None:
            raise
        raise ResultsError(describe_os_error(cause.filename or path, cause)) from err


@contextlib.contextmanager
def writer_lock(lock_file, what: str, timeout: float = 3600.0):
    """Hold the inter-process lock `lock_file` while writing `what`; a second writer waits (and says so).

    The lock is an OS file lock (filelock): the system releases it when its holder exits or is killed,
    so a crashed writer never leaves a stale lock behind.
    """
    from filelock import FileLock, Timeout

    lock_file = Path(lock_file)
    with disk_errors(lock_file):
        lock_file.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(lock_file))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            print(f"cggmlib: another process is writing {what}; waiting for it (lock {lock_file})",
                  file=sys.stderr, flush=True)
            try:
                lock.acquire(timeout=timeout)
            except Timeout:
                raise DataError(f"another process has been writing {what} for {timeout:.0f} s", path=lock_file,
                                expected="that process to finish; stop it (its lock is released when it exits) "
                                         "and rerun") from None
    try:
        yield
    finally:
        lock.release()


def pid_alive(pid: int) -> bool:
    """Whether process `pid` still runs on this machine (another user's counts as running)."""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
