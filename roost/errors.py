"""Errors that carry a message meant for the user."""


class RoostError(Exception):
    """A failure with a message that says what is wrong and what to do."""

    exit_code = 1


class UsageError(RoostError):
    """Bad input from the user (exit status 2)."""

    exit_code = 2
