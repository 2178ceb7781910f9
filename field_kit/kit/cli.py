"""``faillite kit``: describe a field kit once, render every node's files from it.

::

    faillite kit init [--out kit.yaml]          # a commented example: five boards on WiFi
    faillite kit render kit.yaml --out build/   # build/<node>/ per node, build/_provisioning/
    faillite kit stage kit.yaml --out build/ --models-dir DIR  # each node's model files
    faillite kit bundle kit.yaml --out build/ [--arch x86_64]  # offline archive per arch
    faillite kit install build/faillite-kit-KIT-NODE.tar --node ID   # on the node, offline
    faillite kit upgrade build/faillite-kit-KIT-NODE.tar   # a newer release over the installed
    faillite kit check -c /etc/faillite/mesh.yaml [--as ops] [--staged-dir DIR]  # readiness
    faillite kit check -c mesh.yaml --drill [--drill-app APP] [--kill-with CMD]  # + KILL_PRIMARY
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from faillite.cli import add_common, config_path, load_config

# systemd's Restart= brings the worker back after the drill.
DEFAULT_KILL_WITH = "ssh {node} sudo systemctl kill --signal=SIGKILL {unit}"


def register(sub: Any) -> None:
    p = sub.add_parser("kit", help="describe a field kit once (kit.yaml), render each node's files")
    ksub = p.add_subparsers(dest="kit_command", required=True)
    init = ksub.add_parser("init", help="write a commented example kit.yaml (five boards, WiFi)")
    init.add_argument("--out", default="kit.yaml", help="where to write it (default: kit.yaml)")
    init.add_argument("--force", action="store_true", help="replace an existing file")
    init.set_defaults(func=cmd_init)
    render = ksub.add_parser("render", help="one folder per node: config, keys, units, README")
    render.add_argument("kit", help="the kit description (kit.yaml)")
    render.add_argument("--out", required=True, help="folder to render into")
    render.add_argument(
        "--rotate",
        action="store_true",
        help="new CA, keys and secrets for the whole kit: every node must then be reinstalled "
        "(asks for --yes when the kit has keys already)",
    )
    render.add_argument("--yes", action="store_true", help="go ahead with --rotate")
    render.add_argument(
        "--in-place",
        action="store_true",
        help="each node's paths point into its own folder: a rehearsal on one machine",
    )
    render.set_defaults(func=cmd_render)
    stage = ksub.add_parser(
        "stage", help="copy and verify the model files each node must hold, under its budget"
    )
    stage.add_argument("kit", help="the kit description (kit.yaml)")
    stage.add_argument("--out", required=True, help="the rendered kit's folder")
    stage.add_argument("--models-dir", required=True, help="where the model files are")
    stage.add_argument("--method", default="lp", choices=["lp", "milp", "greedy"])
    stage.set_defaults(func=cmd_stage)
    bun = ksub.add_parser("bundle", help="one signed offline archive per node (with network)")
    bun.add_argument("kit", help="the kit description (kit.yaml)")
    bun.add_argument("--out", required=True, help="the rendered kit's folder; archives go here")
    bun.add_argument("--arch", action="append", choices=["x86_64", "aarch64"], default=[])
    bun.add_argument(
        "--debs",
        help="a folder of .deb files (apt-get download on the nodes' distribution): each "
        "archive carries those of its architecture; install.py installs them where missing",
    )
    bun.add_argument(
        "--source",
        default=None,
        help="the FailLite checkout to build from (default: the one this FailLite runs from)",
    )
    bun.add_argument(
        "--python",
        default=None,
        help="every node's Python (default: each node's own, kit.yaml; 3.10 on a Jetson)",
    )
    bun.set_defaults(func=cmd_bundle)
    ins = ksub.add_parser("install", help="install a node from its bundle, with no network")
    ins.add_argument("archive", help="faillite-kit-<kit>-<node>.tar (or its unpacked folder)")
    ins.add_argument("--node", help="this node's id (a bundle of another node is refused)")
    ins.add_argument("--trust", metavar="FINGERPRINT", help="the kit's release key (sha256:...)")
    ins.add_argument("--keep-bundle", action="store_true", help="keep the archive once installed")
    ins.add_argument("--force", action="store_true", help="install an older release")
    ins.add_argument("--root", default="/", help="install under this root (default /)")
    ins.add_argument("--no-systemd", action="store_true", help="do not enable the units")
    ins.add_argument(
        "--no-profile", action="store_true", help="do not measure this board at install"
    )
    up = ksub.add_parser(
        "upgrade",
        help="on a node: install a newer bundle over the installed release (rolls back on failure)",
    )
    up.add_argument("archive", help="faillite-kit-<kit>-<node>.tar (or its unpacked folder)")
    up.add_argument("--root", default="/", help="the install root (default /)")
    up.add_argument("--keep-bundle", action="store_true", help="keep the archive once installed")
    up.add_argument("--no-systemd", action="store_true", help="do not restart the units")
    up.add_argument("--no-profile", action="store_true", help="do not measure this board again")
    up.set_defaults(func=cmd_upgrade, node=None, trust=None, force=False)
    ins.set_defaults(func=cmd_install)
    rk = ksub.add_parser("rekey", help="a lost board: new secrets for its replacement")
    rk.add_argument("kit", help="the kit description (kit.yaml)")
    rk.add_argument("node", help="the node whose board is lost")
    rk.add_argument("--out", required=True, help="the rendered kit's folder")
    rk.add_argument("--in-place", action="store_true", help="the kit was rendered --in-place")
    rk.set_defaults(func=cmd_rekey)
    col = ksub.add_parser("collect", help="every node's logs and the drill reports, one archive")
    col.add_argument("kit", help="the kit description (kit.yaml)")
    col.add_argument("--out", required=True, help="the archive to write (.tar.gz)")
    col.add_argument(
        "--fetch",
        default=None,
        help="command printing a node's logs; {node}, {host} (default: ssh {host} sudo "
        "journalctl -o cat -u 'faillite-*' --since -24h)",
    )
    col.add_argument("--reports", default=None, help="a folder of drill reports to add")
    col.set_defaults(func=cmd_collect)
    uni = ksub.add_parser("uninstall", help="stop and remove this node's units, code, config")
    uni.add_argument("--purge", action="store_true", help="its state, models and users too")
    uni.add_argument("--root", default="/", help="installed under this root (default /)")
    uni.add_argument("--no-systemd", action="store_true", help="do not touch the units")
    uni.set_defaults(func=cmd_uninstall)
    chk = ksub.add_parser("check", help="readiness of a deployed kit: one line per check, fixes")
    add_common(chk)
    chk.add_argument("--as", dest="observer", default="ops", help="observer id (default ops)")
    chk.add_argument("--wait", type=float, default=3.0, help="seconds to listen (default 3)")
    chk.add_argument("--clock-tolerance", type=float, default=0.5, help="seconds (default 0.5)")
    chk.add_argument(
        "--results-within",
        type=float,
        default=10.0,
        help="seconds an app's results may take to show before it counts as not served "
        "(default 10)",
    )
    chk.add_argument(
        "--mission-days",
        type=float,
        default=30.0,
        help="days the kit must run from now: every certificate must outlast them (default 30)",
    )
    chk.add_argument(
        "--plan",
        help="kit stage's plan.json: each app must be served by its planned primary (default: "
        "plan.json beside the config, as in build/_operator/)",
    )
    chk.add_argument("--staged-dir", dest="staged", help="on a node: its staged models")
    chk.add_argument("--engines-dir", help="on a TensorRT node: its engines")
    chk.add_argument(
        "--drill",
        action="store_true",
        help="once every check passes, kill an app's primary worker: is it served again?",
    )
    chk.add_argument("--drill-app", help="the app to drill (default: the first critical app)")
    chk.add_argument(
        "--kill-with",
        default=DEFAULT_KILL_WITH,
        help="command that kills a worker, placeholders {node} {worker} {unit} "
        "(default: %(default)s)",
    )
    chk.add_argument(
        "--drill-bound",
        type=float,
        default=30.0,
        help="seconds the app may take to be served again (default 30)",
    )
    chk.set_defaults(func=cmd_check)


def cmd_init(args: argparse.Namespace) -> int:
    from field_kit.kit.model import EXAMPLE

    out = Path(args.out)
    if out.exists() and not args.force:
        print(f"faillite kit: {out} exists (--force replaces it)", file=sys.stderr)
        return 2
    out.write_text(EXAMPLE)
    print(out)
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    from faillite.config import ConfigError
    from faillite.pki import PkiError
    from field_kit.kit.model import load_kit
    from field_kit.kit.render import render

    t0 = time.monotonic()
    keyed = (Path(args.out) / "_provisioning" / "ca").exists()
    if args.rotate and keyed and not args.yes:
        print(
            f"faillite kit: --rotate replaces the CA, the signing key and every secret in "
            f"{Path(args.out) / '_provisioning'}: every node of the kit stops trusting the "
            "others until it is reinstalled from the new files. Add --yes to go ahead.",
            file=sys.stderr,
        )
        return 2
    try:
        kit = load_kit(Path(args.kit))
        folders = render(kit, Path(args.out), rotate=args.rotate, in_place=args.in_place)
    except (ConfigError, PkiError, OSError) as exc:
        print(f"faillite kit: {exc}", file=sys.stderr)
        return 2
    for folder in folders:
        print(folder)
    print(
        f"rendered {len(folders)} nodes of kit {kit.kit} in {time.monotonic() - t0:.2f} s; "
        f"keys and the CA in {Path(args.out) / '_provisioning'} (keep it off the nodes)",
        file=sys.stderr,
    )
    if args.rotate and keyed:
        print(
            "faillite kit: the kit was re-keyed: reinstall every node from these files",
            file=sys.stderr,
        )
    return 0


def cmd_stage(args: argparse.Namespace) -> int:
    from faillite.catalog import load_catalog, load_profile_overlays
    from faillite.config import ConfigError, packaged_config
    from field_kit.kit.model import load_kit
    from field_kit.kit.stage import StageError, report, stage

    t0 = time.monotonic()
    try:
        kit = load_kit(Path(args.kit))
        # Device classes profiled on the devices (faillite profile) become plannable.
        catalog = load_profile_overlays(
            load_catalog(packaged_config("catalog.yaml")), Path(args.models_dir)
        )
        stages = stage(kit, catalog, Path(args.models_dir), Path(args.out), method=args.method)
    except (ConfigError, StageError, OSError) as exc:
        print(f"faillite kit: {exc}", file=sys.stderr)
        return 2
    print(report(stages))
    lost = stages.apps_losing_protection
    print(
        f"staged in {time.monotonic() - t0:.1f} s"
        + (f"; apps losing protection: {', '.join(lost)}" if lost else "; every file fits"),
        file=sys.stderr,
    )
    unserved = stages.apps_unserved
    if unserved:
        # A kit that cannot serve an app must not go out as if it could.
        print(
            f"faillite kit: no node can serve {', '.join(unserved)} within its disk budget "
            "(raise disk_mb, or drop the app)",
            file=sys.stderr,
        )
        return 1
    return 0


def cmd_bundle(args: argparse.Namespace) -> int:
    from faillite.config import ConfigError
    from field_kit.kit.bundle import BundleError, bundle, release_fingerprint
    from field_kit.kit.model import load_kit

    def say(line: str) -> None:
        print(f"[bundle] {line}", file=sys.stderr, flush=True)

    try:
        kit = load_kit(Path(args.kit))
        arches = args.arch or sorted({n.arch for n in kit.nodes})
        for arch in arches:
            t0 = time.monotonic()
            source = Path(args.source) if args.source else None
            archives = bundle(
                kit,
                Path(args.out),
                source,
                Path(args.out),
                arch,
                python=args.python,
                debs=Path(args.debs) if args.debs else None,
                progress=say,
            )
            for archive in archives.values():
                print(archive)
                say(f"{archive.name}: {archive.stat().st_size / 1e6:.0f} MB")
            say(f"{arch}: {len(archives)} node(s) in {time.monotonic() - t0:.0f} s")
        say(
            f"release key {release_fingerprint(Path(args.out))}: a node's first install is "
            "given it (install.py --trust); later bundles are checked against it"
        )
    except (ConfigError, BundleError, OSError) as exc:
        print(f"faillite kit: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_install(args: argparse.Namespace) -> int:
    from field_kit.kit import installer

    argv = ["--bundle", args.archive, "--root", args.root]
    argv += ["--node", args.node] if args.node else []
    argv += ["--trust", args.trust] if args.trust else []
    argv += ["--keep-bundle"] if args.keep_bundle else []
    argv += ["--force"] if args.force else []
    argv += ["--no-profile"] if args.no_profile else []
    return installer.main([*argv, *(["--no-systemd"] if args.no_systemd else [])])


def cmd_upgrade(args: argparse.Namespace) -> int:
    from field_kit.kit import installer

    before = installer.installed(Path(args.root))
    if before is None:
        print(
            f"faillite kit upgrade: nothing installed under {args.root}: kit install first",
            file=sys.stderr,
        )
        return 2
    rc = cmd_install(args)
    after = installer.installed(Path(args.root))
    if rc == 0 and after is not None:
        print(
            f"upgraded node {after['node']}: release {installer.label(before['release'])} -> "
            f"{installer.label(after['release'])}",
            file=sys.stderr,
        )
    return rc


def cmd_rekey(args: argparse.Namespace) -> int:
    from faillite.config import ConfigError
    from faillite.pki import PkiError
    from field_kit.kit.model import load_kit
    from field_kit.kit.rekey import rekey

    try:
        kit = load_kit(Path(args.kit))
        if args.node not in {n.id for n in kit.nodes}:
            print(f"faillite kit: no node {args.node!r} in {args.kit}", file=sys.stderr)
            return 2
        done = rekey(kit, Path(args.out), args.node, in_place=args.in_place)
    except (ConfigError, PkiError, OSError) as exc:
        print(f"faillite kit: {exc}", file=sys.stderr)
        return 2
    print(f"new secrets for {', '.join(done.secrets) or 'no identity'}")
    for what in done.rotated:
        print(f"new {what}: node {done.node} held it")
    print(f"reinstall (faillite kit bundle, then install): {', '.join(done.changed)}")
    return 0


def cmd_collect(args: argparse.Namespace) -> int:
    from faillite.config import ConfigError
    from field_kit.kit.collect import DEFAULT_FETCH, collect
    from field_kit.kit.model import load_kit
    from field_kit.kit.remote import TemplateError

    try:
        kit = load_kit(Path(args.kit))
        reports = Path(args.reports) if args.reports else None
        got = collect(kit, Path(args.out), fetch=args.fetch or DEFAULT_FETCH, reports=reports)
    except (ConfigError, TemplateError, OSError) as exc:
        print(f"faillite kit: {exc}", file=sys.stderr)
        return 2
    for f in got:
        print(f"{f.node}: {f'{f.lines} lines' if f.ok else 'NOT COLLECTED: ' + f.error}")
    print(args.out)
    return 0 if all(f.ok for f in got) else 1


def cmd_uninstall(args: argparse.Namespace) -> int:
    from field_kit.kit import installer

    argv = ["--uninstall", "--root", args.root]
    argv += ["--purge"] if args.purge else []
    return installer.main([*argv, *(["--no-systemd"] if args.no_systemd else [])])


def cmd_check(args: argparse.Namespace) -> int:
    from field_kit.kit.check import run_checks
    from field_kit.kit.livedrill import DrillError, kill_argv, kill_primary, pick_app

    cfg = load_config(args)
    if args.drill:
        try:  # a typo in the drill's arguments is said before any check runs
            pick_app(cfg, args.drill_app)
            kill_argv(args.kill_with, "-")
        except DrillError as exc:
            print(f"faillite kit check: {exc}", file=sys.stderr)
            return 2
    plan = Path(args.plan) if args.plan else config_path(args.config).parent / "plan.json"
    planned = None
    if args.plan or plan.is_file():
        from faillite.config import ConfigError
        from field_kit.kit.check import read_plan

        try:
            planned = read_plan(plan)
        except ConfigError as exc:
            print(f"faillite kit check: {exc}", file=sys.stderr)
            return 2
    checks = run_checks(
        cfg,
        args.observer,
        planned=planned,
        wait_s=args.wait,
        tolerance_s=args.clock_tolerance,
        results_s=args.results_within,
        models_dir=Path(args.staged) if args.staged else None,
        engines_dir=Path(args.engines_dir) if args.engines_dir else None,
        mission_days=args.mission_days,
    )
    for c in checks:
        print(c.line())
    if args.drill:
        failing = sorted({c.name for c in checks if not c.ok})
        if failing:
            print(f"drill skipped: the kit is not ready ({', '.join(failing)} failed)")
        else:
            sys.stdout.flush()
            drill = kill_primary(
                cfg,
                args.observer,
                args.kill_with,
                app=args.drill_app,
                bound_s=args.drill_bound,
                say=lambda text: print(text, file=sys.stderr, flush=True),
            )
            for c in drill:
                print(c.line())
            checks += drill
    failed = sum(not c.ok for c in checks)
    print(f"{len(checks) - failed} passed, {failed} failed", file=sys.stderr)
    return 1 if failed else 0
