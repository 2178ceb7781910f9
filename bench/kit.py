"""A field kit's figures, measured in one run: render, stage, bundle, install, bare venv to serving.

Run (as root for the rehearsal; the bundles need the package index, as any install does)::

    python bench/kit.py [--models-dir DIR] [--json docs/bench/kit.json] [--plot docs/bench/kit.png]
                        [--no-rehearsal] [--seed N] [--delay S]

1. **The example kit** (``faillite kit init``: five Jetson Orin NX on WiFi, Mosquitto): render
   time; its aarch64 bundle (time, size, what it holds). The same kit with the boards as x86_64
   CPU boxes (``device_class: cpu``, the profile measured here): render, staging per node
   (files and MB against its disk budget), the x86_64 bundle. Jetson staging needs the boards'
   own profile (``faillite profile`` on one Orin), so the example is staged as CPU boxes.
2. **Bare venv to serving, per node**: the five-node LAN kit
   (:func:`field_kit.kit.rehearse.lan_kit`) in network namespaces on a WiFi-like LAN, each node
   installed from its bundle with nothing else reachable (by the machine's own Python, its
   roles then running as their service users), the boards booted in a random order (seeded)
   seconds apart; per node: bundle MB, install seconds, then seconds from start to ready per
   unit (the role's own log event: broker listening, coordinator leader or standby, worker
   assignment applied, camera connected). Nodes install one after the other here (two cores);
   on a kit they install side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

from faillite.catalog import load_catalog
from faillite.config import packaged_config
from faillite.models.build import build_models
from field_kit.drill.netns import Impairment, Lan, root_problem
from field_kit.kit.bundle import bundle, release_fingerprint
from field_kit.kit.hardening import exposure
from field_kit.kit.model import EXAMPLE, Kit
from field_kit.kit.rehearse import OPS, Rehearsal, lan_kit, system_python
from field_kit.kit.render import render
from field_kit.kit.stage import KitStage, report, stage

REPO = Path(__file__).resolve().parents[1]
WIFI = Impairment(delay_ms=10, jitter_ms=5, loss_pct=0.5)


def _timed(what: str, fn: Any, *args: Any, **kw: Any) -> tuple[Any, float]:
    print(f"... {what}", file=sys.stderr, flush=True)
    t0 = time.monotonic()
    out = fn(*args, **kw)
    return out, time.monotonic() - t0


def _as_cpu(example: dict[str, Any]) -> Kit:
    doc = json.loads(json.dumps(example))
    for n in doc["nodes"]:
        n.update(arch="x86_64", device_class="cpu", accelerator="none")
        n.pop("gpu_memory_mb", None)
        n.pop("jetpack", None)
    # The example's cameras are RTSP streams on the kit; staging does not open them.
    return Kit.model_validate(doc)


def _staging(st: KitStage) -> list[dict[str, Any]]:
    return [
        {
            "node": n.node,
            "files": [f.variant for f in n.files],
            "mb": round(n.used_mb, 1),
            "budget_mb": n.budget_mb,
            "left_out": [f.variant for f in n.left_out],
        }
        for n in st.nodes
    ]


def _sizes(archives: dict[str, Path]) -> dict[str, float]:
    return {n: round(a.stat().st_size / 2**20, 1) for n, a in archives.items()}


def example_figures(tmp: Path, models_dir: Path) -> dict[str, Any]:
    example = yaml.safe_load(EXAMPLE)
    jetson = Kit.model_validate(example)
    cpu = _as_cpu(example)
    out: dict[str, Any] = {}
    _, out["render_aarch64_s"] = _timed("render the example", render, jetson, tmp / "jetson")
    archives, t = _timed(
        "bundle aarch64", bundle, jetson, tmp / "jetson", REPO, tmp / "d", "aarch64"
    )
    out["bundle_aarch64"] = {"s": round(t, 1), "mb_per_node": _sizes(archives)}
    _, out["render_cpu_s"] = _timed("render the example as CPU boxes", render, cpu, tmp / "cpu")
    catalog = load_catalog(packaged_config("catalog.yaml"))
    st, out["stage_cpu_s"] = _timed("stage", stage, cpu, catalog, models_dir, tmp / "cpu")
    print(report(st))
    out["staging_cpu"] = _staging(st)
    archives, t = _timed("bundle x86_64", bundle, cpu, tmp / "cpu", REPO, tmp / "d", "x86_64")
    out["bundle_x86_64"] = {"s": round(t, 1), "mb_per_node": _sizes(archives)}
    for k in ("render_aarch64_s", "render_cpu_s", "stage_cpu_s"):
        out[k] = round(out[k], 2)
    return out


def rehearsal_figures(
    tmp: Path, models_dir: Path, seed: int, delay_s: float
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    kit = lan_kit()
    # Under a folder every service user may pass through (the roles run as their units' users).
    top = Path(tempfile.mkdtemp(prefix="faillite-kit-bench-", dir="/tmp"))
    top.chmod(0o755)
    root = top / "lan"
    catalog = load_catalog(packaged_config("catalog.yaml"))
    render(kit, root, in_place=True)
    stage(kit, catalog, models_dir, root)
    archives, _ = _timed("bundle the LAN kit", bundle, kit, root, REPO, tmp / "d", "x86_64")
    lan = Lan(f"flb{uuid.uuid4().hex[:5]}", {**{n.id: n.host for n in kit.nodes}, "ops": OPS})
    python = system_python("3.11")
    reh = Rehearsal(
        kit, archives, root, lan, tmp / "logs", release_fingerprint(root), python=python
    )
    order = [n.id for n in kit.nodes]
    random.Random(seed).shuffle(order)
    boot: dict[str, Any] = {"order": order, "seed": seed, "delay_s": delay_s}
    boot["as_service_users"] = reh.as_users
    try:
        lan.create()
        print(f"... links: {lan.wifi(WIFI, broker='n1', port=8883)}", file=sys.stderr)
        for n in kit.nodes:
            _, t = _timed(f"install {n.id} from the bundle (no network)", reh.install, n.id)
            print(f"    {t:.1f} s", file=sys.stderr)
        last_up, _ = _timed(f"boot the boards in the order {order}", reh.boot, order, delay_s)
        boot["last_board_to_every_unit_ready_s"] = round(last_up, 2)
    finally:
        reh.stop()
        lan.destroy()
        shutil.rmtree(top, ignore_errors=True)
    rows = reh.table()
    for r in rows:
        r["bundle_mb"] = round(archives[r["node"]].stat().st_size / 2**20, 1)
    return rows, boot


def security_figures(tmp: Path) -> dict[str, float | None]:
    """systemd-analyze security per unit of the example kit (Jetson boards, Mosquitto)."""
    render(Kit.model_validate(yaml.safe_load(EXAMPLE)), tmp / "units")
    return {
        f"{u.parents[3].name}/{u.name}": exposure(u)
        for u in sorted((tmp / "units").glob("*/etc/systemd/system/*.service"))
    }


def _plot(rows: list[dict[str, Any]], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2))
    names = [r["node"] for r in rows]
    inst = [r["install_s"] for r in rows]
    ready = [max(r["ready_s"].values(), default=0) for r in rows]
    ax.barh(names, inst, label="install from the bundle (offline)")
    ax.barh(names, ready, left=inst, label="start to ready (slowest unit)")
    ax.set_xlabel("seconds")
    ax.invert_yaxis()
    ax.set_title("Bare venv to serving, per node (five-node kit, one machine)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2, fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=120)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    default_models = os.environ.get("FAILLITE_TEST_MODELS_DIR", str(REPO / ".cache/test-models"))
    p.add_argument("--models-dir", default=default_models, help="built here if missing")
    p.add_argument("--json", help="write the figures here")
    p.add_argument("--plot", help="bare venv to serving per node, as a PNG")
    p.add_argument("--no-rehearsal", action="store_true", help="skip the namespaces part")
    p.add_argument("--seed", type=int, help="the boot order's seed (default: random, printed)")
    p.add_argument("--delay", type=float, default=3.0, help="seconds between boards (default 3)")
    args = p.parse_args()
    models_dir = Path(args.models_dir)
    build_models(load_catalog(packaged_config("catalog.yaml")), models_dir, progress=True)
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="faillite-kit-bench-") as tmp:
        figures["example"] = example_figures(Path(tmp), models_dir)
        problem = root_problem()
        if args.no_rehearsal or problem is not None:
            print(f"rehearsal skipped: {problem or '--no-rehearsal'}", file=sys.stderr)
        else:
            seed = args.seed if args.seed is not None else random.randrange(1_000_000)
            rows, boot = rehearsal_figures(Path(tmp), models_dir, seed, args.delay)
            figures["bare_venv_to_serving"], figures["boot"] = rows, boot
        figures["systemd_security"] = security_figures(Path(tmp))
    ex = figures["example"]
    print(f"\nrender: example (aarch64) {ex['render_aarch64_s']} s, as CPU {ex['render_cpu_s']} s")
    for arch in ("aarch64", "x86_64"):
        b = ex[f"bundle_{arch}"]
        sizes = ", ".join(f"{n} {mb} MB" for n, mb in b["mb_per_node"].items())
        print(f"bundle {arch:<8} resolved offline for every node in {b['s']:.1f} s: {sizes}")
    rows = figures.get("bare_venv_to_serving", [])
    if rows:
        boot = figures["boot"]
        print(
            f"\nboot order {boot['order']} (seed {boot['seed']}, {boot['delay_s']} s apart, "
            f"{'as service users' if boot['as_service_users'] else 'as root'}): last board on "
            f"to every unit ready {boot['last_board_to_every_unit_ready_s']} s"
        )
        print(f"{'node':<5} {'roles':<30} {'bundle MB':>9} {'install s':>9}  start to ready (s)")
        for r in rows:
            ready = ", ".join(
                f"{u.split('.')[0].removeprefix('faillite-')} {s}" for u, s in r["ready_s"].items()
            )
            print(
                f"{r['node']:<5} {','.join(r['roles']):<30} {r['bundle_mb']:>9} "
                f"{r['install_s']:>9}  {ready}"
            )
    print("\nsystemd-analyze security (exposure, 10 worst; <= 3.0 is OK):")
    for unit, score in figures["systemd_security"].items():
        print(f"  {unit:<45} {score if score is not None else 'not rated here'}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    if args.plot and rows:
        _plot(rows, Path(args.plot))
    return 0


if __name__ == "__main__":
    sys.exit(main())
