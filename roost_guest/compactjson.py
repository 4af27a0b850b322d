"""Compact JSON for the wire protocol, without importing `json`.

`json` imports `re` and compiles half a dozen patterns when it loads: under
TCG that is about a tenth of a second of every boot before the guest agent
can answer (its start-up is what Running waits for). The C accelerators
`json` itself uses (`_json`) need none of that, so they are used here
directly, configured as `json.dumps(obj, separators=(",", ":"))` and
`json.loads` are. A Python without `_json` (or with one whose constructor
differs) gets `json`, which behaves the same.

Errors are those of `json`: ValueError (JSONDecodeError is one) for text
that is not JSON, TypeError for an object that cannot be encoded,
RecursionError for one nested too deep.

Standard library only: runs in the guest.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable

_WHITESPACE = " \t\n\r"  # what JSON allows around a value (RFC 8259 section 2)


def _not_serializable(obj: Any) -> Any:
    raise TypeError("Object of type %s is not JSON serializable" % type(obj).__name__)


def _constant(name: str) -> float:
    return {"-Infinity": float("-inf"), "Infinity": float("inf"), "NaN": float("nan")}[name]


class _ScanContext:
    """What `_json.make_scanner` reads off a JSONDecoder: json.loads' defaults."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = staticmethod(_constant)


def _c_codec() -> tuple[Callable[[Any], str], Callable[[str], Any]]:
    import _json

    # markers None: no check for cycles (a message is never cyclic, and one
    # recurses into RecursionError); ensure_ascii, allow_nan as json.dumps.
    encoder = _json.make_encoder(None, _not_serializable, _json.encode_basestring_ascii,
                                 None, ":", ",", False, False, True)
    # typeshed wants a scanner as the context; it reads a JSONDecoder's fields.
    scanner = _json.make_scanner(_ScanContext())  # type: ignore[arg-type]

    def dumps(obj: Any) -> str:
        return "".join(encoder(obj, 0))

    def loads(text: str) -> Any:
        text = text.strip(_WHITESPACE)
        try:
            obj, end = scanner(text, 0)
        except StopIteration as e:
            raise ValueError("Expecting value: char %d" % e.value) from None
        except SystemError:
            # The scanner raises most errors as json.decoder.JSONDecodeError,
            # and fails this way when json.decoder is not loaded: load it
            # (text that is not JSON is off the hot path) and say what json says.
            import json

            return json.loads(text)
        if end != len(text):
            raise ValueError("Extra data: char %d" % end)
        return obj

    return dumps, loads


def _py_codec() -> tuple[Callable[[Any], str], Callable[[str], Any]]:
    import json

    def dumps(obj: Any) -> str:
        return json.dumps(obj, separators=(",", ":"))

    return dumps, json.loads


try:
    dumps, loads = _c_codec()
except (ImportError, AttributeError, TypeError):
    dumps, loads = _py_codec()
