"""The coordinator role.

- ``core``: every decision, pure (typed ``events`` in, typed ``decisions`` out, no clock);
  ``membership`` and ``detectors`` are its parts.
- ``planning``: where plans come from (the planner with lp / milp / greedy, or a static plan).
- ``leadership``: terms, stepping down, a standby's judgement of a vacancy.
- ``service``: MQTT, timers and threads around them; ``planner``: the placement library.
"""
