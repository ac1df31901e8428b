"""Errors that are the user's to fix: the CLI prints them as one line and exits non-zero.

Anything else is a bug in this tool and keeps its traceback.
"""
from __future__ import annotations


class UserError(Exception):
    """A mistake in the user's input (options, data, model); the message says what and where."""

    exit_code = 2


class ConfigError(UserError):
    """An option value is invalid."""


class DataError(UserError):
    """The dataset is missing, malformed or unusable; the message names the file (and line)."""


class ModelError(UserError):
    """The model cannot be found, loaded or adapted to the data."""


class TrackingError(UserError):
    """The MLflow tracking store cannot be reached or used."""
