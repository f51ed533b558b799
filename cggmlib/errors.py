"""The error types cggmlib raises on bad input; each message says what to change.

Every error the library raises on purpose derives from `CGGMError`, so a caller can catch them all,
and each subclass is also a standard Python exception (ValueError, OSError, ...) for code that
already catches those.
"""


class CGGMError(Exception):
    """Base class of every deliberate cggmlib error."""


class ConfigError(CGGMError, ValueError):
    """A configuration value is invalid: unknown dataset or strategy, out-of-range hyperparameter."""


class DataError(CGGMError, ValueError):
    """A dataset file is missing, unreadable or has the wrong content.

    The message names the file, the field and what was expected, and points to the data card.
    """

    def __init__(self, message: str, *, path=None, field=None, expected=None, card=None):
        parts = [message]
        if path is not None:
            parts.append(f"file: {path}")
        if field is not None:
            parts.append(f"field: {field}")
        if expected is not None:
            parts.append(f"expected: {expected}")
        if card is not None:
            parts.append(f"see the data card: {card}")
        super().__init__("\n  ".join(parts))
        self.path, self.field, self.expected, self.card = path, field, expected, card


class NumericsError(CGGMError, FloatingPointError):
    """A loss or gradient became non-finite during training."""


class ResultsError(CGGMError, OSError):
    """A results folder cannot be written (permissions, full disk) or holds an inconsistent run."""
