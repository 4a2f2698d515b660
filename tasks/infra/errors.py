"""Errors that mean "the input is wrong", shown to people as one line."""

from __future__ import annotations


class InputError(Exception):
    """Bad input a person can fix (source, settings, too little data).

    The command line prints these as one ``error:`` line without a traceback;
    programming errors keep theirs.
    """


class InsufficientDataError(InputError):
    """Too few usable tweets for a stage to do its job."""


class RegistryError(InputError):
    """A registry problem a person can fix; the command line prints it as one line."""


class NoChampionError(RegistryError):
    """No version carries the champion alias yet."""


class ModelVerificationError(RegistryError):
    """Model files that do not match their manifest or their registered hash."""
