"""``faillite kit check --drill``: KILL_PRIMARY on a live, deployed kit.

An observer finds the worker serving one app (a critical one by default), the operator's own
command kills it (``ssh {node} sudo systemctl kill --signal=SIGKILL {unit}``: systemd's
``Restart=`` brings it back afterwards), and the drill passes if another worker serves the app
within the bound and the leader stayed the same (a worker's death must not move it).
"""

from __future__ import annotations

import shlex
import subprocess
import time
from collections.abc import Callable
from typing import Any, Final

from faillite.config import ConfigError, MeshConfig
from faillite.mqtt import ConnectError
from field_kit.kit.check import Check
from field_kit.kit.remote import TemplateError, format_argv
from field_kit.observe import AppView, MeshObserver

UNIT: Final = "faillite-worker.service"
PLACEHOLDERS: Final = ("node", "worker", "unit")
KILL_TIMEOUT_S: Final = 30.0
EVENT_GRACE_S: Final = 2.0  # after the app is served again, how long to wait for the event
FIX_FAILOVER: Final = (
    "faillite watch shows the failover table; read the coordinator's log "
    "(journalctl -u faillite-coordinator)"
)


class DrillError(ValueError):
    """The drill cannot run as asked (an unknown app, a bad kill template)."""


def kill_argv(template: str, worker: str) -> list[str]:
    """The kill command for ``worker``, from the operator's ``--kill-with`` template."""
    try:
        return format_argv(
            template, "--kill-with", {p: UNIT if p == "unit" else worker for p in PLACEHOLDERS}
        )
    except TemplateError as exc:
        raise DrillError(str(exc)) from exc


def pick_app(cfg: MeshConfig, app: str | None) -> str:
    """``app`` if the config has it, else its first critical app, else its first app."""
    ids = [a.id for a in cfg.apps]
    if app is not None:
        if app not in ids:
            raise DrillError(f"--drill-app {app}: not an app of mesh {cfg.mesh} ({', '.join(ids)})")
        return app
    if not ids:
        raise DrillError(f"mesh {cfg.mesh} has no apps to drill")
    return next((a.id for a in cfg.apps if a.critical), ids[0])


def kill_primary(
    cfg: MeshConfig,
    observer: str,
    kill_with: str,
    *,
    app: str | None = None,
    bound_s: float = 30.0,
    settle_s: float = 20.0,
    say: Callable[[str], None] | None = None,
) -> list[Check]:
    """Kill the worker serving ``app`` with the operator's command; is it served again?"""
    tell = say or (lambda _text: None)
    try:
        target = pick_app(cfg, app)
        kill_argv(kill_with, "-")  # a bad template fails before anything is touched
    except DrillError as exc:
        return [Check("drill", False, str(exc), "faillite kit check --help")]
    try:
        obs = MeshObserver(cfg, client_id=observer)
    except (ConfigError, ValueError) as exc:  # no secret here, or an invalid observer id
        return [Check("drill", False, f"observer {observer}: {exc}", "see the login check")]
    try:
        obs.start(timeout=10)
        return _drill(obs, target, kill_with, bound_s, settle_s, tell)
    except ConnectError as exc:
        return [Check("drill", False, f"observer {observer}: {exc}", "see the login check")]
    finally:
        obs.stop()


def _drill(
    obs: MeshObserver,
    app: str,
    kill_with: str,
    bound_s: float,
    settle_s: float,
    tell: Callable[[str], None],
) -> list[Check]:
    v = obs.apps[app]
    name = f"KILL_PRIMARY {app}"
    tell(f"drill: waiting up to {settle_s:.0f} s for {app}'s results from its routed worker")
    deadline = time.monotonic() + settle_s
    primary = ""
    while not primary:
        route = obs.routes.route(app)
        # Only results from the worker its route names say who the primary is; and the
        # leader's retained status must be in, to tell whether the kill moved it.
        if route is not None and v.results and v.worker == route.worker and _leader(obs):
            primary = v.worker
        elif time.monotonic() > deadline:
            return [
                Check(
                    "drill",
                    False,
                    f"{name}: not served (or no leader seen) within {settle_s:.0f} s, nothing "
                    "to kill",
                    "faillite watch shows who serves what and the leader; both must be up first",
                )
            ]
        else:
            time.sleep(0.1)
    leader_before = _leader(obs)
    argv = kill_argv(kill_with, primary)
    tell(f"drill: killing {app}'s primary {primary}: {shlex.join(argv)}")
    killed_at = time.time()
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=KILL_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        fix = "is the command installed here? fix --kill-with"
        return [Check("drill", False, f"{name}: {shlex.join(argv)}: {exc}", fix)]
    if done.returncode != 0:
        tail = (done.stderr.strip() or done.stdout.strip())[-300:]
        return [
            Check(
                "drill",
                False,
                f"{name}: {shlex.join(argv)} exited {done.returncode}: {tail or 'no output'}",
                "run the command by hand; fix --kill-with or this machine's access to the node",
            )
        ]
    tell(f"drill: killed; waiting up to {bound_s:.0f} s for another worker to serve {app}")
    deadline = time.monotonic() + bound_s
    served_at: float | None = None
    recovery: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        if served_at is None and v.worker not in ("", primary) and v.last_ts > killed_at:
            served_at = time.monotonic()
        recovery = _recovery(obs, primary, app)
        if served_at is not None and (
            recovery is not None or time.monotonic() - served_at > EVENT_GRACE_S
        ):
            break
        time.sleep(0.1)
    server = v.worker if served_at is not None else ""
    return [
        _served(name, v, primary, server, recovery, killed_at, bound_s),
        _same_leader(leader_before, _leader(obs)),
    ]


def _leader(obs: MeshObserver) -> tuple[str, int] | None:
    st = obs.leader
    return (st.coordinator, st.term) if st is not None and st.state == "leader" else None


def _recovery(obs: MeshObserver, primary: str, app: str) -> dict[str, Any] | None:
    """The coordinator's failover of ``primary`` for ``app``, as the observer measured it."""
    if not any(ev.worker == primary for ev in list(obs.failovers)):
        return None
    for fo in reversed(obs.summary(time.time() - obs.t0)["failovers"]):
        if fo["worker"] == primary and app in fo["recoveries"]:
            rec: dict[str, Any] = fo["recoveries"][app]
            return rec
    return None


def _served(
    name: str,
    v: AppView,
    primary: str,
    server: str,
    rec: dict[str, Any] | None,
    killed_at: float,
    bound_s: float,
) -> Check:
    killed = f"{name}: killed primary {primary} ({UNIT})"
    if not server:
        went = f"; the coordinator failed it over to {rec['server']}" if rec else ""
        return Check(
            "drill",
            False,
            f"{killed}; not served again within {bound_s:.0f} s{went}",
            FIX_FAILOVER,
        )
    segs = list(v.segments)
    first = next((s for s in segs if s.worker == server and s.first_ts > killed_at), None)
    before = [s.last_ts for s in segs if first is not None and s.last_ts < first.first_ts]
    if rec is not None and rec.get("mttr_ms") is not None:
        how = f" ({rec['kind']} backup, variant {rec['variant']})"
        when = f"after MTTR {rec['mttr_ms']:.0f} ms"
        gap_ms = rec.get("gap_ms")
    else:
        # No failover event seen (events are QoS 0): timed from the kill command instead.
        how = f" (variant {first.variant}; no failover event seen)" if first else ""
        when = f"{(first.first_ts - killed_at) * 1000:.0f} ms after the kill" if first else ""
        gap_ms = (first.first_ts - max(before)) * 1000 if first and before else None
    gap = f", results gap {gap_ms / 1000:.1f} s" if gap_ms is not None else ""
    return Check("drill", True, f"{killed}; served again by {server}{how} {when}{gap}".rstrip())


def _same_leader(before: tuple[str, int] | None, after: tuple[str, int] | None) -> Check:
    def say(x: tuple[str, int] | None) -> str:
        return f"{x[0]} term {x[1]}" if x else "no leader"

    same = before is not None and before == after
    detail = (
        f"leader {say(before)} before and after"
        if same
        else f"leader {say(before)} before, {say(after)} after"
    )
    return Check(
        "drill_leader",
        same,
        detail,
        "a worker's death must not move the leader: read the coordinators' logs "
        "(journalctl -u faillite-coordinator) around the drill",
    )
