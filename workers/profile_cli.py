"""``faillite profile``: measure the catalog on this device, write its device-class overlay.

Registered by entry point; it belongs to the worker role (it needs the inference runtime).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from faillite.cli import add_common, load_config, role_imports
from faillite.config import MeshConfig

COMMAND = "faillite profile"


def _ints(text: str) -> tuple[int, ...]:
    try:
        out = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"want comma-separated integers, got {text!r}") from None
    if not out or min(out) < 1:
        raise argparse.ArgumentTypeError(f"want positive integers, got {text!r}")
    return out


def _names(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def register(sub: Any) -> None:
    p = sub.add_parser(
        "profile",
        help="measure the catalog's variants on this device; write its device-class profile",
        description="Measure each variant (load into a fresh and a warm process, first "
        "inference, p50/p99 latency, memory, throughput) and write the device class's profile "
        "as a catalog overlay (default <models_dir>/profiles/<device_class>.yaml), which the "
        "coordinator and `faillite kit stage` merge into the catalog.",
    )
    add_common(p)
    p.add_argument("--device-class", required=True, help="the device class these figures are for")
    p.add_argument("--variants", type=_names, help="comma-separated variants (default: all)")
    p.add_argument(
        "--backend",
        choices=("onnxruntime", "tensorrt"),
        help="runtime to measure with (default: the backend of the config's first worker of "
        "this device class, else onnxruntime)",
    )
    p.add_argument(
        "--providers",
        type=_names,
        help="onnxruntime execution providers in order, comma-separated",
    )
    p.add_argument("--threads", type=int, help="onnxruntime intra-op threads (0: its default)")
    p.add_argument("--engines-dir", type=Path, help="tensorrt: where <variant>.engine files go")
    p.add_argument("--rebuild", action="store_true", help="tensorrt: rebuild existing engines")
    p.add_argument("--fp32", action="store_true", help="tensorrt: build FP32 engines (not FP16)")
    p.add_argument("--runs", type=int, default=50, help="timed batch-1 runs per variant")
    p.add_argument(
        "--batch-sizes", type=_ints, default=(1, 2, 4, 8), help="batch sizes for throughput"
    )
    p.add_argument("--out", type=Path, help="overlay file (default <models_dir>/profiles/...)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--on-disk",
        action="store_true",
        help="without --variants: the variants whose files are in the models dir (staged)",
    )
    p.add_argument(
        "--if-estimated",
        action="store_true",
        help="measure only if the overlay is missing or an estimate (what an install runs)",
    )
    p.set_defaults(func=run)


def backend_section(cfg: MeshConfig, args: argparse.Namespace) -> dict[str, Any]:
    """The backend to measure with, as a config section (``type`` and its options)."""
    section: dict[str, Any] = {}
    for w in cfg.workers:  # how this device class's workers really run their models
        if w.device_class == args.device_class and (
            args.backend is None or w.backend.type == args.backend
        ):
            section = w.backend.model_dump(mode="json", exclude_none=True)
            break
    if not section:
        section = {"type": args.backend or "onnxruntime"}
    if section["type"] == "onnxruntime":
        if args.providers:
            section["providers"] = list(args.providers)
        if args.threads is not None:
            section["intra_op_threads"] = args.threads
    elif section["type"] == "tensorrt" and args.engines_dir is not None:
        section["engines_dir"] = str(args.engines_dir.resolve())
    return section


def run(args: argparse.Namespace) -> int:
    from faillite.catalog import load_catalog, load_overlay, overlay_path
    from faillite.config import ConfigError

    with role_imports("profile", "worker"):
        import numpy  # noqa: F401  (the measuring needs it: one clear line if missing)

        from workers.profile import (
            ProfileError,
            ProfileRun,
            build_engines,
            merge_into_existing,
            pick_variants,
            profile,
            write_overlay,
        )

    def fail(msg: str) -> int:
        print(f"{COMMAND}: {msg}", file=sys.stderr)
        return 2

    if args.runs < 1:
        return fail("--runs must be at least 1")
    cfg = load_config(args)
    out = args.out or overlay_path(cfg.models_path, args.device_class)
    if args.if_estimated and out.is_file():
        try:
            given = load_overlay(out)
        except ConfigError as exc:
            return fail(str(exc))
        if not given.estimate:
            print(f"{COMMAND}: {out} is measured already ({given.source[:80]}): kept")
            return 0
    catalog = load_catalog(cfg.catalog)
    section = backend_section(cfg, args)
    try:
        variants = pick_variants(catalog, cfg.models_path, args.variants, on_disk=args.on_disk)
        if section["type"] == "tensorrt":
            engines = section.get("engines_dir")
            build_engines(
                variants,
                Path(engines) if engines else None,
                rebuild=args.rebuild,
                fp16=not args.fp32,
                progress=not args.no_progress,
            )
        job = ProfileRun(args.device_class, variants, section, args.runs, args.batch_sizes)
        overlay = profile(job, progress=not args.no_progress)
    except ProfileError as exc:
        return fail(str(exc))
    old = load_overlay(out) if out.is_file() else None
    write_overlay(merge_into_existing(old, overlay), out)
    print(
        f"{'variant':<22}{'p50 ms':>9}{'p99 ms':>9}{'first':>8}{'load':>8}{'warm':>8}"
        f"{'MiB':>7}{'GPU MiB':>8}{'fps':>8}{'best b':>7}{'fps@b':>8}"
    )

    def f(x: float | None, nd: int = 1) -> str:
        return "-" if x is None else f"{x:.{nd}f}"

    for name, p in overlay.profiles.items():
        print(
            f"{name:<22}{p.latency_ms:>9.2f}{f(p.p99_ms, 2):>9}{p.first_inference_ms:>8.1f}"
            f"{p.load_ms:>8.1f}{f(p.warm_load_ms):>8}{p.memory_mb:>7.0f}"
            f"{f(p.gpu_memory_mb, 0):>8}{f(p.throughput_fps):>8}{p.best_batch or '-':>7}"
            f"{f(p.best_batch_fps):>8}"
        )
    batching = {p.batching for p in overlay.profiles.values() if p.batching}
    for b in sorted(batching):
        print(f"batching: {b}")
    print(f"source: {overlay.source}")
    print(f"wrote {out}")
    for variant, why in job.failures.items():
        print(f"{COMMAND}: {variant}: not measured: {why}", file=sys.stderr)
    return 1 if job.failures else 0
