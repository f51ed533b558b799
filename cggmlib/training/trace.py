"""Trace: an append-only table of per-step and per-epoch scalars, saved as JSON lines.

Values may be tensors on any device. They are kept as they are and moved to the host in one batch
every `flush_every` rows (or when the table is read), so logging adds no host-device
synchronisation to a training step.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import torch

from ..files import atomic_write_text, read_jsonl


class Trace:
    """Rows of named scalars; one row per `log()` call."""

    def __init__(self, rows: list[dict] | None = None, flush_every: int = 64):
        self.rows: list[dict] = list(rows or [])
        self._pending: list[dict] = []
        self.flush_every = flush_every

    def log(self, **scalars) -> None:
        """Append one row; tensors are detached and converted later, in a batch."""
        row = {k: (v.detach() if torch.is_tensor(v) and v.requires_grad else v) for k, v in scalars.items()
               if v is not None}
        self._pending.append(row)
        if len(self._pending) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        """Move pending tensor values to the host with one transfer per device."""
        if not self._pending:
            return
        tensors = [(i, k, v) for i, row in enumerate(self._pending) for k, v in row.items() if torch.is_tensor(v)]
        by_device: dict = {}
        for i, k, v in tensors:
            by_device.setdefault(v.device, []).append((i, k, v))
        for items in by_device.values():
            values = torch.stack([v.float().reshape(()) for _, _, v in items]).cpu().tolist()
            for (i, k, _), value in zip(items, values):
                self._pending[i][k] = value
        self.rows.extend({k: _plain(v) for k, v in row.items()} for row in self._pending)
        self._pending = []

    def __len__(self) -> int:
        return len(self.rows) + len(self._pending)

    def frame(self) -> pd.DataFrame:
        """All rows as a DataFrame (missing values are NaN)."""
        self.flush()
        return pd.DataFrame(self.rows)

    def steps(self) -> pd.DataFrame:
        """Only the per-step rows (those with a `step` column)."""
        df = self.frame()
        return df[df["step"].notna()].reset_index(drop=True) if "step" in df else df.iloc[0:0]

    def epochs(self) -> pd.DataFrame:
        """Only the per-epoch summary rows (those without a `step`)."""
        df = self.frame()
        return df[df["step"].isna()].reset_index(drop=True) if "step" in df else df

    def save(self, path) -> Path:
        """Write JSON lines atomically (a temporary file, then a rename)."""
        self.flush()
        text = "".join(json.dumps(row, allow_nan=True) + "\n" for row in self.rows)
        return atomic_write_text(path, text)

    @classmethod
    def load(cls, path) -> "Trace":
        return cls(read_jsonl(path))

    def state_dict(self) -> dict:
        self.flush()
        return {"rows": list(self.rows)}

    def load_state_dict(self, state: dict) -> None:
        self.rows, self._pending = list(state["rows"]), []


def _plain(v):
    if isinstance(v, (bool, int, str)) or v is None:
        return v
    if isinstance(v, float):
        return v
    try:
        return float(v)
    except (TypeError, ValueError):
        return str(v)


def is_finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)
