"""Run folders: what one run leaves on disk and how it is read back.

- `folder`: seeding, `save_run` / `load_run`, a run's place under results/, the epoch progress bar;
- `card`: the run card (commit, configuration key, versions, device, data checksums);
- `checksums`: checksums of the data files a run read, cached and re-checked;
- `lock`: one writer per run folder (`.lock`), named when another process waits.

Atomic writes live one layer down, in `cggmlib.files`; they are re-exported here with the rest, so
`cg.runs.<name>` reads as it always has.
"""
from ..files import atomic_torch_save, atomic_write_bytes, atomic_write_json, atomic_write_text, ensure_writable
from .card import git_commit, package_versions, run_card
from .folder import load_run, progress_bar, run_dir, save_run, seed_everything
from .lock import LOCK_FILES, lock_run_folder, move_aside, run_folder_lock, unlock_run_folder

__all__ = ["LOCK_FILES", "atomic_torch_save", "atomic_write_bytes", "atomic_write_json", "atomic_write_text",
           "ensure_writable", "git_commit", "load_run", "lock_run_folder", "move_aside", "package_versions",
           "progress_bar", "run_card", "run_dir", "run_folder_lock", "save_run", "seed_everything",
           "unlock_run_folder"]
