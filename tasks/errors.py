"""Errors that mean "the input is wrong", shown to people as one line."""

from __future__ import annotations


class InputError(Exception):
    """Bad input a person can fix (source, settings, too little data).

    The command line prints these as one ``error:`` line without a traceback;
    programming errors keep theirs.
    """


class InsufficientDataError(InputError):
    """Too few usable tweets for a stage to do its job."""
