"""What ``faillite up`` and ``faillite watch`` show of a mesh: the live per-app table (or plain
periodic lines), the mesh's events one readable line each, and the summary at the end."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table

from faillite import messages
from field_kit.observe import MeshObserver

PLAIN_EVERY_S = 2.0  # a plain line this often


def follow(
    observer: MeshObserver,
    console: Console,
    *,
    live: bool,
    done: Callable[[], bool],
    stop: threading.Event,
    start: float,
    render: Callable[[], RenderableType] | None = None,
    line: Callable[[], str | None] | None = None,
    tick: Callable[[], None] | None = None,
) -> None:
    """Show the mesh until ``done()``: a live table (``render``, default the observer's table)
    or, without ``live``, a plain line (``line``, default the observer's; None: skip one)
    every two seconds. ``tick`` runs four times a second (events printed as they arrive)."""
    render = render or observer.table
    line = line or observer.line
    if live:
        with Live(render(), console=console, refresh_per_second=4) as view:
            while not done():
                if tick is not None:
                    tick()
                stop.wait(0.25)
                view.update(render())
        return
    last = 0.0
    while not done():
        if tick is not None:
            tick()
        stop.wait(0.25)
        if time.monotonic() - last >= PLAIN_EVERY_S:
            last = time.monotonic()
            text = line()
            if text is not None:
                console.print(f"[{time.monotonic() - start:5.1f}s] {text}", highlight=False)


# -- events ----------------------------------------------------------------------------------


def clock(ts: float) -> str:
    """Wall-clock time of day, to the millisecond (local time)."""
    return time.strftime("%H:%M:%S", time.localtime(ts)) + f".{int(ts * 1000) % 1000:03d}"


def _scalars(detail: dict[str, Any], skip: Iterable[str] = ()) -> str:
    skipped = set(skip)
    return " ".join(
        f"{k}={v}"
        for k, v in detail.items()
        if k not in skipped and isinstance(v, str | int | float | bool) and v != ""
    )


def _failover(ev: messages.Event) -> str:
    d = ev.detail
    moved = ", ".join(
        f"{app}->{r.get('server', '?')} {r.get('kind', '')} {r.get('variant', '')}"
        + (f" (then {r['final']})" if r.get("final") not in (None, r.get("variant")) else "")
        for app, r in (d.get("recoveries") or {}).items()
    )
    lost = ", ".join(f"{app} ({why})" for app, why in (d.get("unrecoverable") or {}).items())
    text = (
        f"{ev.worker} failed ({d.get('cause', '?')}), {d.get('source', '?')} decision "
        f"in {d.get('decision_ms', '?')} ms, generation {d.get('generation', '?')}"
    )
    return text + (f": {moved}" if moved else "") + (f"; UNRECOVERABLE: {lost}" if lost else "")


def describe(ev: messages.Event) -> str:
    """What an event says, in words (its ids and details)."""
    d = ev.detail
    match ev.kind:
        case "failover":
            return _failover(ev)
        case "failure_detected":
            return (
                f"{ev.worker}" + (f" ({ev.app})" if ev.app else "") + f": {d.get('cause', '?')}"
                f", silence {d.get('silence_ms', 0)} ms"
            )
        case "upgrade":
            return f"{ev.app} on {ev.worker}: {d.get('previous', '?')} -> {d.get('variant', '?')}"
        case "replan":
            unplaced = d.get("unplaced") or {}
            unprotected = d.get("unprotected") or []
            return (
                f"{d.get('reason', '?')}: generation {d.get('generation', '?')}, solved in "
                f"{d.get('solve_ms', '?')} ms"
                + (f", unprotected: {', '.join(map(str, unprotected))}" if unprotected else "")
                + (f", UNPLACED: {', '.join(map(str, unplaced))}" if unplaced else "")
            )
        case "coordinator_takeover":
            return (
                f"{ev.source} leads with term {d.get('term', '?')} (after term "
                f"{d.get('inherited_term', '?')}), kept {len(d.get('kept') or [])} app(s)"
            )
        case "failback_load":
            return f"apps {', '.join(map(str, d.get('apps') or []))} moving back: " + ", ".join(
                f"{w} loads {v}" for w, v in (d.get("loads") or {}).items()
            )
        case "shed" | "unshed":
            return (
                f"{ev.worker} {'sheds' if ev.kind == 'shed' else 'takes back'} "
                f"{d.get('step', '?')} (level {d.get('level', '?')}): {d.get('reason', '?')}"
            )
        case "verdict_withheld":
            return f"{ev.worker} not failed ({d.get('cause', '?')}): {d.get('reason', '?')}"
        case "assignment_applied":
            serving = d.get("serving") or {}
            return (
                f"{ev.worker} generation {d.get('generation', '?')} term {d.get('term', '?')}: "
                + (", ".join(f"{a}={v}" for a, v in serving.items()) or "serves nothing")
            )
    ids = " ".join(x for x in (ev.worker, ev.app) if x)
    rest = _scalars(d)
    return f"{ids}: {rest}" if ids and rest else ids or rest


def event_line(ev: messages.Event) -> str:
    """One event, one line: wall-clock time, kind, what it says."""
    return f"{clock(ev.ts)} {ev.kind:<20} {describe(ev)}"


def events_table(events: list[messages.Event]) -> Table:
    t = Table(title="events", expand=False, show_edge=False)
    t.add_column("time")
    t.add_column("kind")
    t.add_column("what", overflow="fold")
    for ev in events:
        style = (
            "red"
            if ev.kind in ("failover", "failure_detected")
            else "yellow"
            if ev.kind in ("shed", "verdict_withheld")
            else None
        )
        t.add_row(clock(ev.ts), ev.kind, describe(ev), style=style)
    if not events:
        t.add_row("-", "-", "no event yet")
    return t


def table_with_events(observer: MeshObserver, last: int, header: str = "") -> Group:
    """The per-app table, and the ``last`` events below it."""
    recent = observer.latest_events(last)
    parts: list[RenderableType] = [header] if header else []
    parts.append(observer.table())
    if last > 0:
        parts.append(events_table(recent))
    return Group(*parts)


# -- summary ---------------------------------------------------------------------------------


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.0f} ms"


def print_summary(console: Console, summary: dict[str, Any]) -> None:
    console.print(f"\nsummary after {summary['duration_s']} s:")
    for app, s in summary["apps"].items():
        e2e, inf = s["e2e_ms"], s["inference_ms"]
        console.print(
            f"  {app:<14} results={s['results']:<6} fps={s['fps']:<6} via {s['workers']} "
            f"top={s['top_labels']} e2e p50={e2e['p50']}ms p90={e2e['p90']}ms "
            f"p99={e2e['p99']}ms infer p50={inf['p50']}ms",
            highlight=False,
        )
        if not s["served_at_end"]:
            console.print(f"  {'':<14} [red]NOT SERVED AT THE END[/]: {s['served_detail']}")
        if s.get("unserved_s") or s.get("paused_s"):
            console.print(
                f"  {'':<14} without results: {s['unserved_s']} s unserved, "
                f"{s['paused_s']} s paused on purpose (longest gap {s['longest_gap_s']} s)",
                highlight=False,
            )
    if summary["failovers"]:
        console.print("failovers:")
    for f in summary["failovers"]:
        console.print(
            f"  at {f['t_s']:.1f} s: {f['worker']} failed ({f['cause']}), detected at "
            f"{f['detected_s']:.1f} s, decided in {_ms(f['decision_ms'])} ({f['source']})",
            highlight=False,
        )
        for app, r in f["recoveries"].items():
            final = f" (then {r['final']})" if r["final"] != r["variant"] else ""
            first = (
                f"first result {_ms(r['mttr_ms'])} after the failure "
                f"(no result for {_ms(r['gap_ms'])})"
                if r["first_result_s"] is not None
                else "[red]no result from it yet[/]"
            )
            console.print(
                f"    {app} -> {r['server']} {r['kind']} {r['variant']}{final}: {first}",
                highlight=False,
            )
        for app, why in f["unrecoverable"].items():
            console.print(f"    [red]{app} unrecoverable[/]: {why}", highlight=False)
    if summary.get("refused_results"):
        console.print(
            f"refused results (not from the routed worker): {summary['refused_results']}",
            highlight=False,
        )
    exited = summary.get("exited") or []
    if exited:
        console.print("exited during the run:")
    for e in exited:
        console.print(
            f"  {e['name']} exit {e['exit_code']} at {e['t_s']:.1f} s (log: {e['log']})",
            highlight=False,
        )
    if not summary["all_served"]:
        verdict = "[red]SOME APPS GOT NO RESULTS[/]"
    elif not summary["served_at_end"]:
        verdict = "[red]SOME APPS WERE NOT SERVED AT THE END[/]"
    else:
        verdict = "every app got results and was still served at the end"
    extra = []
    if summary["failovers"]:
        extra.append(f"{len(summary['failovers'])} failover(s)")
    if exited:
        extra.append(f"{len(exited)} process(es) exited")
    console.print(f"  {verdict}" + (f" ({', '.join(extra)})" if extra else ""))
