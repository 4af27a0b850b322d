"""Frames for fuzzing both ends of the guest agent protocol.

Hypothesis draws templates (a message kind, arbitrary JSON to mix in, and a
seed); a batch is then built from them at run time, when the ids that are
live on the connection are known: valid frames and their mutations (wrong
types, dropped and added keys, truncated or bit-flipped bodies, nesting
beyond the bound, non-object JSON, stray data frames). Mutations of the
content keep the frame's length right, so the session must go on; the
mutations that break the framing (huge or zero lengths, unknown kinds, a
frame cut short, random bytes) come last in a batch, as `killer`.
"""

from __future__ import annotations

import json
import random
import struct
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

from roost_guest import protocol

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**64), 2**64) | st.floats()
    | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=6,
)


@dataclass
class Template:
    kind: str
    extra: dict[str, Any]  # arbitrary fields mixed into some variants
    seed: int


def templates(kinds: list[str]) -> st.SearchStrategy[list[Template]]:
    template = st.builds(Template, st.sampled_from(kinds),
                         st.dictionaries(st.text(max_size=8), json_values, max_size=3),
                         st.integers(0, 2**32))
    return st.lists(template, min_size=4, max_size=10)


# Values of every JSON type, for swapping into a field of another type.
ODD_VALUES: list[Any] = [None, True, False, 0, -1, 2**53 + 1, 2**64, 1.5, float("inf"), "",
                         "x" * 300, "1", [], [1, [2]], {}, {"a": {"b": []}}]


def frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def mutate(rng: random.Random, obj: dict[str, Any], extra: dict[str, Any]) -> bytes:
    """A frame holding `obj` or a mutation of it whose length is right."""
    choice = rng.random()
    if choice < 0.3:
        return _json(obj)
    if choice < 0.45:  # a field of another type
        key = rng.choice(sorted(obj)) if obj else "id"
        return _json({**obj, key: rng.choice(ODD_VALUES)})
    if choice < 0.55:  # fields dropped, fields added
        keep = {k: v for k, v in obj.items() if rng.random() < 0.6}
        return _json({**keep, **extra})
    if choice < 0.62:  # nesting beyond the bound, or at it
        depth = rng.choice([protocol.MAX_DEPTH - 1, protocol.MAX_DEPTH, 70, 1000, 30_000])
        key = rng.choice(sorted(obj)) if obj else "x"
        text = json.dumps({**obj, key: None}).encode()
        nested = b"[" * depth + b"]" * depth
        return frame(b"J" + text.replace(b"null", nested, 1))
    body = bytearray(_json(obj)[4:])  # the kind byte and the payload
    if choice < 0.72:  # cut short, re-framed
        return frame(bytes(body[: rng.randrange(1, len(body) + 1)]))
    if choice < 0.82:  # bits flipped, kind byte kept
        for _ in range(rng.randint(1, 3)):
            if len(body) > 1:
                body[rng.randrange(1, len(body))] ^= 1 << rng.randrange(8)
        return frame(bytes(body))
    if choice < 0.87:  # bytes inserted
        at = rng.randrange(1, len(body) + 1)
        return frame(bytes(body[:at]) + rng.randbytes(rng.randint(1, 8)) + bytes(body[at:]))
    if choice < 0.93:  # JSON that is no object
        return frame(b"J" + json.dumps(rng.choice([[obj], "text", 7, None, [], 1e300])).encode())
    # a data frame: too short, for an unknown stream, or empty
    stream = rng.choice([0, 1, 2, 3, 2**32 - 1, rng.randrange(2**32)])
    return frame(b"D" + rng.choice([b"", b"\0", struct.pack(">I", stream)])
                 + rng.randbytes(rng.choice([0, 1, 100])))


def data_frame(rng: random.Random, stream_id: int) -> bytes:
    return frame(b"D" + struct.pack(">I", stream_id) + rng.randbytes(rng.choice([0, 1, 500, 4000])))


def killer(rng: random.Random, valid: bytes) -> bytes:
    """Bytes that break the framing, then enough zeros that a decoder waiting
    inside a frame gets to the break too (a zero length is itself one)."""
    choice = rng.randrange(6)
    if choice == 0:
        wire = struct.pack(">I", rng.randrange(protocol.MAX_FRAME + 1, 2**32)) + b"J{}"
    elif choice == 1:
        wire = b"\0\0\0\0"
    elif choice == 2:
        wire = frame(bytes([rng.choice(b"ABCEFGHIjd\0\xff")]) + b'{"id":1}')
    elif choice == 3:
        wire = valid[: rng.randrange(1, len(valid))]  # the rest never comes
    elif choice == 4:
        wire = rng.randbytes(rng.randint(1, 64))
    else:
        head = bytearray(valid)
        head[rng.randrange(5)] ^= 1 << rng.randrange(8)
        wire = bytes(head)
    return wire + b"\0" * (protocol.MAX_FRAME + 8)


def _json(obj: dict[str, Any]) -> bytes:
    try:
        return protocol.encode_json(obj)
    except protocol.ProtocolError:  # too large, or a float JSON cannot hold: re-framed raw
        return frame(b"J" + json.dumps(obj)[: protocol.MAX_FRAME - 1].encode())
