"""The host agent's own errors."""

from __future__ import annotations

from roost.errors import RoostError


class HostAgentError(RoostError):
    """An operation of the running host agent failed (not the user's input)."""


class Forbidden(RoostError):
    """The instance's configuration does not allow the request (HTTP 403)."""
