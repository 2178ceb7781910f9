"""How long a mesh goes without results when its broker dies: crash and silent death of the
broker's board, a bridged Mosquitto pair in network namespaces (as root). See
:mod:`field_kit.drill.broker_switch`.

Run: ``python bench/broker_switch.py [--reps 10] [--json docs/bench/broker_switch.json]``.
"""

from __future__ import annotations

import sys

from field_kit.drill.broker_switch import main

if __name__ == "__main__":
    sys.exit(main())
