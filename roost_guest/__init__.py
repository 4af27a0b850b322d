"""roost's guest agent (standard library only) and the shared wire protocol."""

import time as _time

__version__ = "0.1.0"

# When the interpreter reached the agent's package (CLOCK_MONOTONIC, as the
# boot timeline): the rest of its start-up is the agent's own imports.
INTERPRETER_UP = _time.monotonic()
