"""`python -m roost.hostagent NAME`: what `roost start` spawns (no CLI imports)."""

import sys

from roost.hostagent.main import main

if len(sys.argv) != 2:
    sys.exit("usage: python -m roost.hostagent NAME")
sys.exit(main(sys.argv[1]))
