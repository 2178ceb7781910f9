"""The worker the CLI runs; it lives in :mod:`workers.service`. The worker in parts:

- :mod:`workers.model_cache`: load (with a warm-up inference), unload, what is on disk;
- :mod:`workers.serving`: the serving table (assignment order, fencing, warm standby);
- :mod:`workers.counters`: progress counters, per-app stats, the heartbeat message;
- :mod:`workers.inference`: one frame through its model, to a result;
- :mod:`workers.plugins`: the plug-in point on the inference path (drills' faults);
- :mod:`workers.service`: the threads and the MQTT side.
"""

from __future__ import annotations

from workers.service import Worker

__all__ = ["Worker"]
