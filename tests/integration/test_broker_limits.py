"""The one-broker load generator (:mod:`field_kit.loadgen`) and its bench
(``bench/broker_limits.py``) on both brokers: the measurement is sane (offered and delivered
counted, latency measured, CPU read), the ramp stops by itself (at its last step, at a limit, at
its wall-time budget), and a bound nothing can meet stops it at the first step with that reason.
Every broker and generator process is stopped at the end."""

from __future__ import annotations

import importlib.util
import json
import math
import os
from pathlib import Path
from types import ModuleType

import cv2
import numpy as np
import pytest

from faillite import envelope
from field_kit.brokers import BROKER_KINDS, BrokerLauncher, BrokerUnavailableError
from field_kit.loadgen import (
    Limits,
    LoadGenerator,
    Timing,
    camera_steps,
    control_steps,
    make_jpeg,
    ramp,
)

BENCH = Path(__file__).resolve().parents[2] / "bench" / "broker_limits.py"
QUICK = Timing(warmup_s=0.3, measure_s=0.7, drain_s=0.3)
LIMITS = {"delivery", "latency", "heartbeat_loss", "heartbeat_lag", "generator_saturated"}


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("broker_limits_bench", BENCH)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.parametrize("size", [20_000, 100_000, 100_003, 500_000])
def test_frames_are_real_jpegs_of_the_size_asked(size: int) -> None:
    jpeg, w, h = make_jpeg(size)
    assert len(jpeg) == size
    frame = envelope.unpack(
        envelope.pack(jpeg, seq=1, capture_ns=1, width=w, height=h), max_bytes=2 * size
    )
    envelope.check_image(frame, max_pixels=w * h)
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None and image.shape[:2] == (h, w)


def test_quick_bench_on_both_brokers(tmp_path: Path) -> None:
    out = tmp_path / "limits.json"
    assert _bench().main(["--quick", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    kinds = {r["broker"] for r in doc["ramps"]}
    assert kinds | {s.split(":")[0] for s in doc["skipped"]} == set(BROKER_KINDS), doc["skipped"]
    assert "amqtt" in kinds
    ok = 0
    for r in doc["ramps"]:
        steps = r["steps"]
        assert steps, r
        for s in steps:
            # Counted on both sides, whatever the step's outcome.
            assert s["window_s"] > 0 and s["error"] == "", s
            assert s["heartbeats_sent"] > 0 and s["generator_cores"] >= 0, s  # 10 ms ticks
            assert 0 <= s["heartbeats_delivered"] <= s["heartbeats_sent"], s
            assert s["heartbeat_lag"]["n"] == s["heartbeats_delivered"], s
            assert s["frames_offered"] == s["frames_sent"] * s["load"]["receivers"], s
            assert 0 <= s["frames_delivered"] <= s["frames_offered"], s
            assert s["frame_latency"]["n"] == s["frames_delivered"], s
            assert s["broker_cores"] is not None and s["broker_cores"] >= 0, s
            if s["limit"] is not None:
                continue  # a quick step over a limit (a busy shared host): said, not measured
            ok += 1
            assert s["heartbeat_lag"]["p99_ms"] >= s["heartbeat_lag"]["p50_ms"] > 0, s
            if s["load"]["cameras"]:
                assert s["frames_sent"] > 0 and s["frames_delivered"] > 0, s
                assert s["frame_latency"]["p99_ms"] >= s["frame_latency"]["p50_ms"] > 0, s
        # It stopped by itself: after its last step, or at the first step over a limit.
        assert all(s["limit"] is None for s in steps[:-1]), r
        if r["stop"] == "max_step":
            assert steps[-1]["limit"] is None
            assert len(steps) == (2 if r["name"].startswith("frames") else 1)
        else:
            assert r["stop"] in LIMITS and steps[-1]["limit"] == r["stop"], r
    assert ok, "no quick step was within the limits"


@pytest.mark.parametrize("kind", BROKER_KINDS)
def test_an_impossible_bound_stops_the_ramp_at_the_first_step(tmp_path: Path, kind: str) -> None:
    with BrokerLauncher(tmp_path / "brokers") as launcher:
        try:
            ep = launcher.start(kind, mesh="loadgen")
        except BrokerUnavailableError as exc:
            pytest.skip(str(exc))
        pid = launcher.process(ep).proc.pid
        with LoadGenerator(ep.host, ep.port, broker_pid=pid, procs=1, timing=QUICK) as gen:
            children = gen.pids
            frames = ramp(
                gen,
                camera_steps(10, 20_000, cameras=(1, 2)),
                name="frames",
                limits=Limits(latency_p99_ms=0.001),
                confirm=1,  # tried again, over again: it counts
            )
            control = ramp(
                gen,
                control_steps((4, 8)),
                name="control",
                limits=Limits(heartbeat_lag_p99_ms=0.001),
            )
            out_of_time = ramp(gen, control_steps((4,)), max_wall_s=0.0)
    assert frames.stop == "latency" and len(frames.steps) == 1, frames
    step = frames.steps[0]
    assert step.limit == "latency" and "p99" in step.detail and step.tries == 2
    assert step.frames_delivered > 0 and step.frame_latency.p99_ms > 0.001
    assert step.bottleneck in ("broker", "generator", "host", "unclear")
    assert math.isfinite(step.broker_cores)
    assert frames.last_ok is None and frames.limit_step is step
    assert control.stop == "heartbeat_lag" and len(control.steps) == 1, control
    assert control.steps[0].heartbeats_delivered > 0 and control.steps[0].tries == 1
    assert out_of_time.stop == "max_wall" and not out_of_time.steps
    assert all(_gone(p) for p in children)
    assert not launcher.processes
