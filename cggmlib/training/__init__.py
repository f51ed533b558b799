"""The training loop's parts (the loop itself is cggmlib/train.py): optimizer and scheduler (`optim`),
validation-selected evaluation (`protocol`), resumable checkpoints (`checkpoint`), the non-finite check
(`finite`), multi-process training (`distributed`) and the per-step record (`trace`)."""
