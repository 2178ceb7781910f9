"""The ``faillite`` command: one entry point for every role and tool."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from faillite import log as flog
from faillite.config import ConfigError, MeshConfig, load_mesh_config, packaged_config
from faillite.presence import IdentityInUseError

DEFAULT_CONFIG = "demo.yaml"


def _config_path(value: str | None) -> Path:
    if value is None:
        return packaged_config(DEFAULT_CONFIG)
    p = Path(value)
    if not p.exists() and not p.is_absolute() and packaged_config(value).exists():
        return packaged_config(value)  # a name of a shipped config, e.g. "demo.yaml"
    return p


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if getattr(args, "broker", None):
        host, _, port = args.broker.rpartition(":")
        if not port.isdigit():
            raise ConfigError(f"--broker wants HOST:PORT, got {args.broker!r}")
        if host:
            out["broker.host"] = host
        out["broker.port"] = int(port)
    if getattr(args, "models_dir", None):
        out["models_dir"] = str(Path(args.models_dir).resolve())
    return out


def load(args: argparse.Namespace) -> MeshConfig:
    return load_mesh_config(_config_path(args.config), _overrides(args))


def _until_signal(stop: Callable[[], None]) -> None:
    """Call ``stop`` on the first SIGINT / SIGTERM, on a thread of its own.

    A handler runs in the main thread between two bytecodes, possibly while that thread holds
    the very lock ``stop`` needs (an Event's, while the main thread is setting it): calling
    ``stop`` from the handler could deadlock the process. Later signals are ignored."""
    fired: list[int] = []

    def handler(signum: int, _frame: Any) -> None:
        if fired:
            return
        fired.append(signum)
        threading.Thread(target=stop, name="stop-signal", daemon=True).start()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


# -- subcommands ---------------------------------------------------------------------------


def cmd_broker(args: argparse.Namespace) -> int:
    with _role("broker", "broker"):
        from broker.embedded import BrokerSetupError, run_broker

    cfg = load(args)
    flog.configure(mesh=cfg.mesh, role="broker")
    broker = cfg.broker
    if args.host or args.port is not None:
        broker = broker.model_copy(
            update={
                "host": args.host or broker.host,
                "port": broker.port if args.port is None else args.port,
            }
        )
    try:
        run_broker(broker, cfg.mesh)
    except BrokerSetupError as exc:
        print(f"faillite broker: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_sensor(args: argparse.Namespace) -> int:
    with _role("sensor", "sensor"):
        from sensors.publisher import SensorPublisher

    cfg = load(args)
    flog.configure(mesh=cfg.mesh, role="sensor", sensor=args.id)
    scfg = cfg.sensor(args.id)
    updates: dict[str, Any] = {}
    if args.source:
        updates["source"] = args.source
    if args.fps:
        updates["fps"] = args.fps
    scfg = scfg.model_copy(update=updates)
    pub = SensorPublisher(cfg.mesh, scfg, cfg.broker, follow_results=args.results)
    try:
        pub.claim(replace=args.replace)
    except IdentityInUseError as exc:
        print(f"faillite sensor: {exc}", file=sys.stderr)
        return 2
    _until_signal(pub.stop)
    every = 2.0 if args.results else 5.0

    def report() -> None:
        while not pub.stopped.wait(every):
            print(pub.report().line(scfg.id), flush=True)

    threading.Thread(target=report, name="status-line", daemon=True).start()
    pub.run(duration_s=args.duration, max_frames=args.frames)
    print(pub.report().line(scfg.id), flush=True)
    return 0


FAULTS_PLUGIN = "field_kit.drill.faults"  # what --fault-injection loads


def cmd_worker(args: argparse.Namespace) -> int:
    from faillite.catalog import load_catalog

    with _role("worker", "worker"):
        from workers.plugins import PluginError, load_plugin
        from workers.service import Worker

    cfg = load(args)
    flog.configure(mesh=cfg.mesh, role="worker", worker=args.id)
    worker = Worker(cfg, cfg.worker(args.id), load_catalog(cfg.catalog))
    plugins = list(args.plugin or ())
    if args.fault_injection and FAULTS_PLUGIN not in plugins:
        plugins.append(FAULTS_PLUGIN)
    try:
        for name in plugins:  # on the main thread: a plug-in may install signal handlers
            load_plugin(name, worker)
            flog.get_logger("worker").info("plugin_loaded", plugin=name)
    except PluginError as exc:
        print(f"faillite worker: {exc}", file=sys.stderr)
        return 2
    _until_signal(worker.request_stop)
    try:
        worker.claim(replace=args.replace)
    except IdentityInUseError as exc:
        print(f"faillite worker: {exc}", file=sys.stderr)
        return 2
    if not worker.stopping:  # no SIGTERM while it looked
        worker.start()
        worker.wait()
    worker.stop()
    return 0


def cmd_coordinator(args: argparse.Namespace) -> int:
    from faillite.catalog import load_catalog

    with _role("coordinator", "coordinator"):
        from coordinator.service import CoordinatorService, StandbyWatch

    cfg = load(args)
    flog.configure(mesh=cfg.mesh, role="coordinator", coordinator=args.id)
    catalog = load_catalog(cfg.catalog)
    term_floor = 0
    if args.standby:
        stop = threading.Event()
        _until_signal(stop.set)
        watch = StandbyWatch(cfg, args.id, args.rank)
        if watch.wait_for_vacancy(stop) is None:
            return 0
        term_floor = watch.highest_term  # a successor's term is above the newest leader seen
    coord = CoordinatorService.from_config(cfg, catalog, args.id, term_floor=term_floor)
    _until_signal(coord.request_stop)
    coord.start()
    coord.wait()
    coord.stop()
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    with _role("up", "demo"):
        from field_kit.up import UpOptions, run_up

    cfg = load(args)
    flog.configure(
        mesh=cfg.mesh,
        role="up",
        fmt="console",
        level=os.environ.get("FAILLITE_LOG_LEVEL", "warning"),
    )
    opts = UpOptions(
        config_path=_config_path(args.config).resolve(),
        duration_s=args.duration,
        port=args.port,
        view=not args.no_view,
        logs_dir=Path(args.logs_dir) if args.logs_dir else None,
        summary_json=Path(args.summary_json) if args.summary_json else None,
        models_dir=Path(args.models_dir).resolve() if args.models_dir else None,
    )
    return run_up(cfg, opts)


def cmd_models_build(args: argparse.Namespace) -> int:
    from faillite.catalog import load_catalog

    with _role("models build", "models"):
        from faillite.models.build import build_models

    cfg = load(args)
    flog.configure(mesh=cfg.mesh, role="models", level="warning")
    catalog = load_catalog(cfg.catalog)
    paths = build_models(
        catalog, cfg.models_path, args.variant or None, force=args.force, progress=True
    )
    for p in paths:
        print(p)
    return 0


def cmd_models_list(args: argparse.Namespace) -> int:
    from faillite.catalog import load_catalog

    cfg = load(args)
    catalog = load_catalog(cfg.catalog)
    print(f"models dir: {cfg.models_path}")
    print(f"{'family':<18}{'variant':<22}{'top-1':>7}{'mem MB':>8}{'file MB':>9}  on disk")
    for fam in catalog.families:
        for v in fam.variants:
            on_disk = "yes" if (cfg.models_path / v.file).is_file() else "no"
            print(
                f"{fam.name:<18}{v.name:<22}{v.accuracy:>7.1f}{v.memory_mb:>8.0f}"
                f"{v.file_size_mb:>9.1f}  {on_disk}"
            )
    return 0


# -- parser --------------------------------------------------------------------------------


def _replace_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--replace",
        action="store_true",
        help="take over from a live process with this id (it steps down); without it, a "
        "live one makes this one refuse to start",
    )


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", help="mesh config (YAML); default: the shipped demo.yaml")
    p.add_argument("--broker", help="override the broker address, HOST:PORT")
    p.add_argument("--models-dir", help="override where model files live")


# Tools whose parsers import what they run (the planner, matplotlib): loaded only when named, so
# a role's start never pays for them, and a node without their extra still has ``faillite``.
TOOLS: dict[str, tuple[str, str, str]] = {
    "drill": (
        "field_kit.drill.runner",
        "run named failure drills against a live mesh on this machine",
        "drill",
    ),
    "simulate": (
        "field_kit.simulate.cli",
        "simulate failures of a fleet and compare protection policies",
        "simulate",
    ),
}


class MissingExtraError(RuntimeError):
    """A command whose third-party packages are not installed on this node."""


def _missing(command: str, extra: str, exc: ModuleNotFoundError) -> MissingExtraError:
    return MissingExtraError(
        f"faillite {command} needs the {extra!r} extra, which is not installed here "
        f"(no module {exc.name!r}): pip install 'faillite[{extra}]'"
    )


def _register_tool(sub: Any, name: str, module: str, extra: str) -> None:
    try:
        register = importlib.import_module(module).register
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.split(".")[0] in FIRST_PARTY:
            raise
        error = _missing(name, extra, exc)

        def unavailable(_args: argparse.Namespace) -> int:
            raise error

        p = sub.add_parser(name, add_help=False)
        p.add_argument("rest", nargs=argparse.REMAINDER)
        p.set_defaults(func=unavailable)
        return
    register(sub)


FIRST_PARTY = frozenset({"faillite", "broker", "workers", "coordinator", "sensors", "field_kit"})


@contextlib.contextmanager
def _role(command: str, extra: str) -> Iterator[None]:
    """Turn a missing third-party module of a role into one clear line (which extra)."""
    try:
        yield
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.split(".")[0] in FIRST_PARTY:
            raise
        raise _missing(command, extra, exc) from exc


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="faillite", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("broker", help="run the embedded MQTT broker (amqtt)")
    _common(p)
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.set_defaults(func=cmd_broker)

    p = sub.add_parser("sensor", help="publish a camera's frames")
    _common(p)
    p.add_argument("--id", required=True, help="sensor id in the config")
    p.add_argument("--source", help="override: scene, camera index, file, folder or URL")
    p.add_argument("--fps", type=float, help="override the target frame rate")
    p.add_argument(
        "--results",
        action="store_true",
        help="follow results of this sensor's apps and print end-to-end latency",
    )
    p.add_argument("--duration", type=float, help="stop after SECONDS")
    p.add_argument("--frames", type=int, help="stop after N frames")
    _replace_flag(p)
    p.set_defaults(func=cmd_sensor)

    p = sub.add_parser("worker", help="run an inference worker")
    _common(p)
    p.add_argument("--id", required=True, help="worker id in the config")
    p.add_argument(
        "--plugin",
        action="append",
        metavar="MODULE",
        help="load a worker plug-in (a module with install(worker)); repeatable",
    )
    p.add_argument(
        "--fault-injection",
        action="store_true",
        help=f"drills: --plugin {FAULTS_PLUGIN} (SIGUSR1 toggles a hung inference thread, "
        "SIGUSR2 slow frames)",
    )
    _replace_flag(p)
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("coordinator", help="run the coordinator")
    _common(p)
    p.add_argument("--id", default="main", help="this coordinator's id (default: main)")
    p.add_argument(
        "--standby",
        action="store_true",
        help="wait as a standby and take over when the leader is gone",
    )
    p.add_argument(
        "--rank",
        type=int,
        default=1,
        help="standby rank: rank r takes over after r x coordinator.takeover_delay_s",
    )
    p.set_defaults(func=cmd_coordinator)

    p = sub.add_parser("up", help="run a whole mesh on this machine with a live view")
    _common(p)
    p.add_argument("--duration", type=float, help="run SECONDS, print a summary, exit")
    p.add_argument(
        "--port", type=int, help="embedded broker port (0: a free one); default: the config's"
    )
    p.add_argument("--no-view", action="store_true", help="plain periodic lines, no live table")
    p.add_argument("--logs-dir", help="where each process's log goes (default ./runs/up-*)")
    p.add_argument("--summary-json", help="also write the summary as JSON here")
    p.set_defaults(func=cmd_up)

    for name, (module, text, extra) in TOOLS.items():
        if name == command:
            _register_tool(sub, name, module, extra)
        else:  # named in the help; its own parser is only built when it runs
            sub.add_parser(name, help=text)

    p = sub.add_parser("models", help="build and list model files")
    msub = p.add_subparsers(dest="models_command", required=True)
    b = msub.add_parser(
        "build", help="build the catalog's ONNX models (EfficientNet-Lite, synthetic)"
    )
    _common(b)
    b.add_argument("--variant", action="append", help="only this variant (repeatable)")
    b.add_argument("--force", action="store_true", help="rebuild files that exist")
    b.set_defaults(func=cmd_models_build)
    ls = msub.add_parser("list", help="list catalog variants and whether they are on disk")
    _common(ls)
    ls.set_defaults(func=cmd_models_list)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command).parse_args(argv)
    try:
        rc: int = args.func(args)
    except ConfigError as exc:
        print(f"faillite: config error: {exc}", file=sys.stderr)
        return 2
    except MissingExtraError as exc:
        print(f"faillite: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return rc


if __name__ == "__main__":
    sys.exit(main())
