"""Errors that carry a message meant for the user."""


class RoostError(Exception):
    """A failure with a message that says what is wrong and what to do."""

    exit_code = 1


class UsageError(RoostError):
    """Bad input from the user (exit status 2)."""

    exit_code = 2


# Typed failures of the operations layer (roost.ops) and the SDK: each still
# a RoostError with its message for the user, so the CLI prints it as before.

class NotFound(RoostError):
    """No instance (or snapshot, or file) of that name."""


class AlreadyExists(RoostError):
    """An instance of that name exists already; `usage`: the name was the
    user's choice of a new one (exit status 2)."""

    def __init__(self, message: str, usage: bool = False) -> None:
        super().__init__(message)
        self.exit_code = 2 if usage else 1


class WrongState(RoostError):
    """The instance is not in a state the operation works on (running,
    stopped, suspended...). `status` is the one it was in, when known."""

    def __init__(self, message: str, status: str | None = None) -> None:
        super().__init__(message)
        self.status = status


class Busy(RoostError):
    """Another roost command is working on the same instance."""


class HostAgentUnreachable(RoostError):
    """The instance's host agent did not answer on its socket."""


class RequestFailed(RoostError):
    """The host agent (or the guest agent behind it) answered a request with
    an error: 403 the configuration does not allow it, 409 the instance's
    state does not, 5xx the guest or the host failed. `status` is the HTTP
    status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class RequestRefused(UsageError):
    """The host agent refused a request as wrong (HTTP 400, or 404: no such
    thing); a usage error."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


# Bounds on what a message quotes: a value from the user may be megabytes.
QUOTE_CHARS = 200
MAX_LISTED = 20


def quote(value: object, limit: int = QUOTE_CHARS) -> str:
    """`value`'s repr, cut to `limit` characters with an ellipsis."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def listing(lines: list[str], limit: int = MAX_LISTED) -> list[str]:
    """At most `limit` of `lines`, then a line that counts the rest."""
    if len(lines) <= limit:
        return lines
    return [*lines[:limit], f"... and {len(lines) - limit} more"]


def shown(text: str, limit: int = 80) -> str:
    """`text` as it is when short and printable, else quoted (and cut)."""
    return text if len(text) <= limit and text.isprintable() else quote(text, limit)


def cut(text: str, limit: int = 2 * QUOTE_CHARS) -> str:
    """A message made elsewhere, at most about `limit` characters: its start
    and its end (where the reason usually is), the middle left out."""
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}...{text[-half:]}"
