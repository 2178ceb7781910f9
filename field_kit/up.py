"""``faillite up``: a whole mesh on one machine with a live view of results.

Starts the embedded broker, the coordinator, every worker and every sensor of the config as
child processes (logs under ``runs/up-<time>/``), shows results per app, and stops everything
in order on Ctrl-C or after ``--duration``. The summary says what each app got, what failed
over (when, which worker and why, where each app went, how long until its first result from
there) and which child processes exited.

With a duration it exits 0 when every app got results and was still being served at the end
(its last result a few seconds before the end, or a failover just then that recovered it) or
paused on purpose under overload (its route says ``shed``: only non-critical apps are), and 1
otherwise. A child that exited (a worker killed to watch a failover) is reported, but by
itself does not fail a run whose mesh recovered.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console

from faillite.catalog import Catalog, load_catalog
from faillite.config import ConfigError, MeshConfig
from faillite.log import get_logger
from faillite.models.build import build_models, missing_models
from field_kit.observe import MeshObserver
from field_kit.procs import ProcessGroup, faillite_cmd, free_port, wait_port
from field_kit.secure import secure_twin, write_config
from field_kit.view import follow
from field_kit.view import print_summary as _print_summary

log = get_logger("up")
VIEW_ID = "up-view"  # the live view's observer id


@dataclass(frozen=True, slots=True)
class UpOptions:
    config_path: Path
    duration_s: float | None = None
    port: int | None = None
    view: bool = True
    logs_dir: Path | None = None
    summary_json: Path | None = None
    models_dir: Path | None = None
    secure: bool = False  # accounts, TLS and signing made for the run (field_kit.secure)
    observers: tuple[str, ...] = ()  # observer accounts made besides the view's (--secure)


def _needed_variants(cfg: MeshConfig, catalog: Catalog) -> list[str]:
    """The static plan's variants, or every variant of the apps' families for the planner."""
    if cfg.coordinator.type == "static":
        return sorted({s.variant for ss in cfg.coordinator.assignments.values() for s in ss})
    return sorted({v.name for a in cfg.apps for v in catalog.family(a.family).variants})


def run_up(cfg: MeshConfig, opts: UpOptions) -> int:
    console = Console(soft_wrap=not sys.stdout.isatty())
    catalog = load_catalog(cfg.catalog)
    needed = _needed_variants(cfg, catalog)
    missing = missing_models(catalog, cfg.models_path, needed)
    if missing:
        console.print(f"building models {', '.join(missing)} into {cfg.models_path}")
        build_models(catalog, cfg.models_path, missing, progress=True)

    port = cfg.broker.port if opts.port is None else opts.port
    if port == 0:
        port = free_port(cfg.broker.host)
    if wait_port(cfg.broker.host, port, timeout=0.2):
        raise ConfigError(
            f"port {cfg.broker.host}:{port} is already in use (another broker?); "
            "pass --port 0 for a free one or --port N"
        )
    cfg = cfg.model_copy(update={"broker": cfg.broker.model_copy(update={"port": port})})
    logs_dir = opts.logs_dir or Path("runs") / time.strftime("up-%Y%m%d-%H%M%S")
    config_path = opts.config_path
    if opts.secure:
        cfg = secure_twin(cfg, logs_dir / "secure", observers=(VIEW_ID, *opts.observers))
        config_path = write_config(cfg, logs_dir / "secure" / "mesh.yaml")
    common = ["--config", str(config_path), "--broker", f"{cfg.broker.host}:{port}"]
    if opts.models_dir is not None:
        common += ["--models-dir", str(opts.models_dir)]
    how = " with accounts, TLS and signing" if opts.secure else ""
    console.print(f"mesh [bold]{cfg.mesh}[/] on {cfg.broker.host}:{port}{how}, logs in {logs_dir}")

    stop = threading.Event()

    def on_signal(_signum: int, _frame: Any) -> None:
        stop.set()

    old_int = signal.signal(signal.SIGINT, on_signal)
    old_term = signal.signal(signal.SIGTERM, on_signal)
    group = ProcessGroup(logs_dir, env={"FAILLITE_LOG_FORMAT": "json"})
    observer: MeshObserver | None = None
    rc = 0
    try:
        broker = group.start("broker", "broker", faillite_cmd("broker", *common))
        if not wait_port(cfg.broker.host, port, timeout=20, proc=broker.proc):
            console.print(f"[red]broker did not start[/]\n{broker.tail()}")
            return 1
        group.start("coordinator", "coordinator", faillite_cmd("coordinator", *common))
        for w in cfg.workers:
            group.start(f"worker-{w.id}", "worker", faillite_cmd("worker", "--id", w.id, *common))
        observer = MeshObserver(cfg, client_id=VIEW_ID)
        observer.start()
        for s in cfg.sensors:
            group.start(f"sensor-{s.id}", "sensor", faillite_cmd("sensor", "--id", s.id, *common))
        start = time.monotonic()
        observer.mark_start()
        exited = _watch(group, observer, opts, stop, start, console)
        elapsed = time.monotonic() - start
        summary = observer.summary(elapsed)
        summary["exited"] = exited
        summary["ok"] = bool(summary["all_served"] and summary["served_or_shed_at_end"])
        _print_summary(console, summary)
        if opts.summary_json is not None:
            opts.summary_json.write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2))
        if opts.duration_s is not None and not summary["ok"]:
            rc = 1
    finally:
        if observer is not None:
            observer.stop()
        codes = group.stop_all()
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)
        log.debug("stopped", exit_codes=codes)
    return rc


def _watch(
    group: ProcessGroup,
    observer: MeshObserver,
    opts: UpOptions,
    stop: threading.Event,
    start: float,
    console: Console,
) -> list[dict[str, Any]]:
    """Show the mesh until the duration is over or Ctrl-C; the children that exited meanwhile
    (name, role, exit code, log, when), reported as they go."""
    exited: list[dict[str, Any]] = []

    def done() -> bool:
        if opts.duration_s is not None and time.monotonic() - start >= opts.duration_s:
            return True
        seen = {e["name"] for e in exited}
        for c in group.dead():
            if c.name not in seen:
                code = c.proc.returncode
                at = round(time.monotonic() - start, 2)
                exited.append(
                    {
                        "name": c.name,
                        "role": c.role,
                        "pid": c.pid,
                        "exit_code": code,
                        "t_s": at,
                        "log": str(c.log_path) if c.log_path else None,
                    }
                )
                console.print(
                    f"[yellow][{at:5.1f}s] {c.name} exited with {code}[/] (log: {c.log_path})",
                    highlight=False,
                )
        return stop.is_set()

    follow(
        observer,
        console,
        live=opts.view and sys.stdout.isatty(),
        done=done,
        stop=stop,
        start=start,
    )
    return exited
