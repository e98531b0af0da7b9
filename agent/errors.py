"""Typed errors of the public API. Each message says what the user can do about it."""

from __future__ import annotations


class DuplexError(Exception):
    """Base class of every error the agent raises on purpose."""


class ModelNotFoundError(DuplexError):
    pass


class ModelLoadError(DuplexError):
    pass


class SessionLimitError(DuplexError):
    """Every batch slot is taken; try again later or raise `max_sessions`."""


class SessionClosedError(DuplexError):
    pass


class InvalidAudioError(DuplexError, ValueError):
    """Audio input was rejected (the session keeps running)."""


class InvalidImageError(DuplexError, ValueError):
    """An image was rejected (the session keeps running)."""


class UnsupportedError(DuplexError):
    """The loaded model lacks a capability (e.g. vision)."""


class UserFacingError(Exception):
    """A problem the user can fix (a bad flag, a missing file, an extra to install): the command line prints it
    without a traceback. Here, not in the CLI package, so every command module can raise it."""
