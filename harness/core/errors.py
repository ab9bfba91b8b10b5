"""User-facing errors: one line saying what is wrong and how to fix it.

The CLI catches :class:`HarnessError` and prints ``error: <message>`` with no
traceback, exiting with :attr:`HarnessError.exit_code`; anything else is a bug and
keeps its traceback.
"""
from __future__ import annotations


class HarnessError(Exception):
    """Base of every error a user can cause and fix."""

    exit_code: int = 2

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(message if hint is None else f"{message} ({hint})")

    def one_line(self) -> str:
        """The message and hint on one line, as the CLI prints it."""
        text = self.message if self.hint is None else f"{self.message}; {self.hint}"
        return " ".join(text.split())


class ConfigError(HarnessError):
    """A configuration key is unknown, mistyped or has an impossible value."""


class RegistryError(ConfigError):
    """A name that no plug-in registered."""


class DataError(HarnessError):
    """A dataset file or directory is missing or malformed."""


class CheckpointError(HarnessError):
    """A checkpoint is corrupt, truncated, from another code version, or cannot be written."""
