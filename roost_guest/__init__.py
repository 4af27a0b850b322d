"""roost's guest agent (standard library only) and the shared wire protocol."""

__version__ = "0.1.0"
