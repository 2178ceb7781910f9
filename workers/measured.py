"""The profile this board measured of its own device class, as the coordinators are told it.

``faillite profile`` (run at install) writes ``<models>/profiles/<device_class>.yaml``; a
worker whose overlay there was measured, not estimated, publishes it retained
(``WorkerProfile``), so coordinators that were staged with an estimate plan with the board's
real figures (``coordinator.profiles``).
"""

from __future__ import annotations

from pathlib import Path

from faillite import messages
from faillite.catalog import load_overlay, overlay_path
from faillite.config import ConfigError


def measured_profile(
    models_dir: Path, device_class: str, worker: str, ts: float
) -> tuple[messages.WorkerProfile | None, str]:
    """The message to publish, or None and why there is none."""
    path = overlay_path(models_dir, device_class)
    if not path.is_file():
        return None, f"no profile of {device_class!r} at {path}"
    try:
        overlay = load_overlay(path)
    except ConfigError as exc:
        return None, str(exc).splitlines()[0][:300]
    if overlay.device_class != device_class:
        return None, f"{path} is of device class {overlay.device_class!r}"
    if overlay.estimate:
        return None, f"{path} is an estimate (faillite profile on this board measures it)"
    costs = tuple(
        messages.VariantCost(
            variant=name,
            latency_ms=p.latency_ms,
            memory_mb=p.memory_mb,
            load_ms=p.load_ms,
            first_inference_ms=p.first_inference_ms,
        )
        for name, p in sorted(overlay.profiles.items())
        if not p.estimate
    )
    if not costs:
        return None, f"{path} holds no measured variant"
    msg = messages.WorkerProfile(worker, device_class, overlay.source[:1024], ts, costs)
    return msg, ""
