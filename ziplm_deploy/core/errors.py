"""Two kinds of failure: the user's (bad input, with a hint how to fix it) and ours (a bug)."""

from __future__ import annotations


class ZiplmError(Exception):
    """Base class of every error this package raises on purpose."""


class UserError(ZiplmError):
    """Bad input: the CLI prints it as one line and exits 2.

    ``hint`` says what to do about it; it is appended to the message.
    """

    def __init__(self, message: str, hint: str | None = None):
        self.message = message
        self.hint = hint
        super().__init__(f"{message} ({hint})" if hint else message)


class InternalError(ZiplmError):
    """A broken invariant inside ziplm-deploy: a bug to report, printed with its traceback."""
