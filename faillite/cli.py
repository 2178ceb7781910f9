"""The ``faillite`` command: one entry point for every role and tool.

This module knows no role. Each role and tool registers its subcommand through the
``faillite.commands`` entry points (``sensors/cli.py``, ``workers/cli.py``, ...); only the one
named on the command line is imported, so a role's start pays for nothing else, and a node
without some extra still has ``faillite`` (that command then says which extra it needs). The
helpers below are what those command modules share: config loading with the common overrides,
signals, and the one-line message for a missing extra.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any

from faillite import log as flog
from faillite.config import ConfigError, MeshConfig, load_mesh_config, packaged_config

DEFAULT_CONFIG = "demo.yaml"
COMMANDS_GROUP = "faillite.commands"
# The order of the help; commands an installed plug-in adds come after, by name.
ORDER = ("up", "broker", "sensor", "worker", "coordinator", "uplink", "drill", "simulate", "models")
EXTRA_OF = {"up": "demo"}  # the extra a command needs, where it is not named after it
FIRST_PARTY = frozenset({"faillite", "broker", "workers", "coordinator", "sensors", "field_kit"})


# -- what the command modules share --------------------------------------------------------


def config_path(value: str | None) -> Path:
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


def load_config(args: argparse.Namespace) -> MeshConfig:
    """The mesh config of ``--config`` with ``--broker`` and ``--models-dir`` applied."""
    return load_mesh_config(config_path(args.config), _overrides(args))


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", help="mesh config (YAML); default: the shipped demo.yaml")
    p.add_argument("--broker", help="override the broker address, HOST:PORT")
    p.add_argument("--models-dir", help="override where model files live")


def add_replace(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--replace",
        action="store_true",
        help="take over from a live process with this id (it steps down); without it, a "
        "live one makes this one refuse to start",
    )


def until_signal(stop: Callable[[], None]) -> None:
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


class MissingExtraError(RuntimeError):
    """A command whose third-party packages are not installed on this node."""


def _missing(command: str, extra: str, exc: ModuleNotFoundError) -> MissingExtraError:
    return MissingExtraError(
        f"faillite {command} needs the {extra!r} extra, which is not installed here "
        f"(no module {exc.name!r}): pip install 'faillite[{extra}]'"
    )


def _third_party(exc: ModuleNotFoundError) -> bool:
    return exc.name is not None and exc.name.split(".")[0] not in FIRST_PARTY


@contextlib.contextmanager
def role_imports(command: str, extra: str) -> Iterator[None]:
    """Turn a missing third-party module of a role into one clear line (which extra)."""
    try:
        yield
    except ModuleNotFoundError as exc:
        if not _third_party(exc):
            raise
        raise _missing(command, extra, exc) from exc


# -- the core's own commands -----------------------------------------------------------------


def cmd_models_build(args: argparse.Namespace) -> int:
    from faillite.catalog import load_catalog

    with role_imports("models build", "models"):
        from faillite.models.build import build_models

    cfg = load_config(args)
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

    cfg = load_config(args)
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


def register_models(sub: Any) -> None:
    p = sub.add_parser("models", help="build and list model files")
    msub = p.add_subparsers(dest="models_command", required=True)
    b = msub.add_parser(
        "build", help="build the catalog's ONNX models (EfficientNet-Lite, synthetic)"
    )
    add_common(b)
    b.add_argument("--variant", action="append", help="only this variant (repeatable)")
    b.add_argument("--force", action="store_true", help="rebuild files that exist")
    b.set_defaults(func=cmd_models_build)
    ls = msub.add_parser("list", help="list catalog variants and whether they are on disk")
    add_common(ls)
    ls.set_defaults(func=cmd_models_list)


# -- the parser ------------------------------------------------------------------------------


def _commands() -> dict[str, EntryPoint]:
    found = {ep.name: ep for ep in entry_points(group=COMMANDS_GROUP)}
    rank = {name: i for i, name in enumerate(ORDER)}
    return dict(sorted(found.items(), key=lambda kv: (rank.get(kv[0], len(ORDER)), kv[0])))


def _register(sub: Any, name: str, ep: EntryPoint) -> None:
    """The command's real parser; a command whose module needs a missing extra gets a parser
    that says which extra when it runs."""
    try:
        register = ep.load()
    except ModuleNotFoundError as exc:
        if not _third_party(exc):
            raise
        error = _missing(name, EXTRA_OF.get(name, name), exc)

        def unavailable(_args: argparse.Namespace) -> int:
            raise error

        p = sub.add_parser(name, help=f"(needs the {EXTRA_OF.get(name, name)!r} extra)")
        p.add_argument("rest", nargs=argparse.REMAINDER)
        p.set_defaults(func=unavailable)
        return
    register(sub)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """``command``: the one to build fully (None: all of them, for the help)."""
    parser = argparse.ArgumentParser(
        prog="faillite", description="FailLite Mesh: every role and tool of a kit."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, ep in _commands().items():
        if command is None or command == name:
            _register(sub, name, ep)
        else:  # never run in this process: a name for argparse's choices only
            sub.add_parser(name)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    known = _commands()
    args = build_parser(command if command in known else None).parse_args(argv)
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
