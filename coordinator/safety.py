"""Never worse than doing nothing: whether a verdict on a live worker may move its apps.

A worker that crashed, went silent or said goodbye is gone: its apps move wherever they can.
A worker judged on its performance (stalled, slow) is still there, and moving its apps is only
right where each of them lands somewhere: an app that no survivor could take stays with it,
degraded, rather than be left unserved. A slow worker's apps must moreover be predicted to run
at least ``MARGIN`` times faster where they would go (from the catalog's profile and the
destination's own measured pace), or the move is not worth its gap.

Pure: the caller gives the failover plan it would apply and the figures it has.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

from coordinator.planner import FailoverPlan

# A slow worker's app moves only to where it is predicted this many times faster.
MARGIN: Final = 2.0


@dataclass(frozen=True, slots=True)
class MoveVerdict:
    ok: bool
    reason: str


def judge_move(
    fp: FailoverPlan,
    apps: Mapping[str, float | None],
    predict_ms: Callable[[str, str], float] | None = None,
) -> MoveVerdict:
    """Whether failing over the worker that serves ``apps`` (app -> its measured per-frame ms
    there, None if unmeasured) by ``fp`` leaves every one of them better off. ``predict_ms
    (server, variant)``: what a frame would cost at the destination; None for a stall (nothing
    is served there now, anywhere is better)."""
    if not apps:
        return MoveVerdict(True, "serves nothing")
    stranded = sorted(a for a in apps if a not in fp.recoveries)
    if stranded:
        return MoveVerdict(False, f"no other worker can serve {', '.join(stranded)}")
    if predict_ms is None:
        return MoveVerdict(True, "every app has a destination")
    for app, here_ms in sorted(apps.items()):
        r = fp.recoveries[app]
        there_ms = predict_ms(r.server, r.first_variant)
        if here_ms is None or there_ms * MARGIN > here_ms:
            here = "unmeasured" if here_ms is None else f"{here_ms:.0f} ms"
            return MoveVerdict(
                False,
                f"{app} would not be served better on {r.server} "
                f"({r.first_variant}: {there_ms:.0f} ms predicted, {here} here)",
            )
    return MoveVerdict(True, "every app is predicted faster elsewhere")
