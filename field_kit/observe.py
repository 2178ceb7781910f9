"""An observer of a running mesh: results per app, workers' status, as a table or a summary."""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as paho
from rich.table import Table

from faillite import messages
from faillite.badinput import BadInput
from faillite.config import MeshConfig
from faillite.mqtt import MeshClient
from faillite.stats import RateMeter, Window, percentiles
from faillite.topics import APP_RESULTS, WORKER_STATUS, Role, Topics, parse


@dataclass
class AppView:
    app: str
    results: int = 0
    worker: str = ""
    variant: str = ""
    label: str = ""
    score: float = 0.0
    generation: int = 0
    rate: RateMeter = field(default_factory=RateMeter)
    e2e: Window = field(default_factory=lambda: Window(100_000))
    inference: Window = field(default_factory=lambda: Window(100_000))
    labels: Counter[str] = field(default_factory=Counter)
    workers: Counter[str] = field(default_factory=Counter)
    first_ts: float = 0.0
    last_ts: float = 0.0


class MeshObserver:
    """Subscribes to results and worker status of one mesh (read-only, as an observer)."""

    def __init__(self, cfg: MeshConfig, client_id: str = "observer") -> None:
        self.cfg = cfg
        self.topics = Topics(cfg.mesh)
        self.apps: dict[str, AppView] = {a.id: AppView(a.id) for a in cfg.apps}
        self.workers: dict[str, messages.WorkerStatus] = {}
        self.bad = BadInput()
        self._lock = threading.Lock()
        self.client = MeshClient(f"faillite-{cfg.mesh}-{client_id}", cfg.broker, role=Role.OBSERVER)
        self.client.subscribe(self.topics.filter(APP_RESULTS), self._on_result, qos=0)
        self.client.subscribe(self.topics.filter(WORKER_STATUS), self._on_status, qos=1)
        self.client.subscribe(self.topics.placement, self._on_placement, qos=1)
        self.backups: dict[str, str] = {}

    def _on_result(self, msg: paho.MQTTMessage) -> None:
        r = self.bad.decode(messages.Result, msg)
        if r is None:
            return
        now = time.time()
        with self._lock:
            v = self.apps.get(r.app)
            if v is None:
                v = self.apps[r.app] = AppView(r.app)
            if r.generation < v.generation:
                return  # stale: from a worker that lost the app
            v.generation = r.generation
            v.results += 1
            v.worker, v.variant = r.worker, r.variant
            if r.top:
                v.label, v.score = r.top[0].label, r.top[0].score
                v.labels[r.top[0].label] += 1
            v.workers[r.worker] += 1
            v.rate.tick(time.monotonic())
            v.e2e.add((now - r.capture_ts) * 1000)
            v.inference.add(r.latency.inference_ms)
            v.first_ts = v.first_ts or now
            v.last_ts = now

    def _on_placement(self, msg: paho.MQTTMessage) -> None:
        p = self.bad.decode(messages.Placement, msg) if msg.payload else None
        if p is None:
            return
        backups = {
            e.app: f"{e.worker} {e.role} {e.variant}" for e in p.entries if e.role != "primary"
        }
        with self._lock:
            self.backups = backups

    def _on_status(self, msg: paho.MQTTMessage) -> None:
        parsed = parse(msg.topic)
        if not msg.payload or parsed is None:
            return
        st = self.bad.decode(messages.WorkerStatus, msg)
        if st is None:
            return
        with self._lock:
            self.workers[parsed[1].ids["worker"]] = st

    def start(self, timeout: float = 30.0) -> None:
        self.client.start(connect_timeout=timeout)

    def stop(self) -> None:
        self.client.stop()

    def all_served(self) -> bool:
        with self._lock:
            return all(v.results > 0 for v in self.apps.values())

    def table(self) -> Table:
        t = Table(title=f"FailLite mesh '{self.cfg.mesh}': results", expand=False)
        for col in (
            "app",
            "worker",
            "variant",
            "top label",
            "score",
            "fps",
            "results",
            "e2e p50 ms",
            "e2e p99 ms",
            "infer p50 ms",
            "backup",
        ):
            t.add_column(
                col,
                justify="right"
                if col[0].isdigit() or "ms" in col or col in ("fps", "results", "score")
                else "left",
            )
        now = time.monotonic()
        with self._lock:
            for v in self.apps.values():
                e2e = v.e2e.snapshot()
                inf = v.inference.snapshot()
                t.add_row(
                    v.app,
                    v.worker or "-",
                    v.variant or "-",
                    v.label or "-",
                    f"{v.score:.2f}",
                    f"{v.rate.rate(now):.1f}",
                    str(v.results),
                    f"{e2e.p50:.1f}",
                    f"{e2e.p99:.1f}",
                    f"{inf.p50:.1f}",
                    self.backups.get(v.app, "none"),
                )
            online = sorted(w for w, s in self.workers.items() if s.state == "online")
        t.caption = f"workers online: {', '.join(online) or 'none'}"
        return t

    def line(self) -> str:
        now = time.monotonic()
        with self._lock:
            parts = [
                f"{v.app}: {v.results} results {v.rate.rate(now):.1f}/s via "
                f"{v.worker or '-'}/{v.variant or '-'} top={v.label or '-'}"
                for v in self.apps.values()
            ]
        return " | ".join(parts)

    def summary(self, duration_s: float) -> dict[str, Any]:
        with self._lock:
            apps: dict[str, dict[str, Any]] = {}
            for v in self.apps.values():
                e2e = percentiles(v.e2e.values())
                inf = percentiles(v.inference.values())
                apps[v.app] = {
                    "results": v.results,
                    "fps": round(v.results / duration_s, 2) if duration_s > 0 else 0.0,
                    "workers": dict(v.workers),
                    "variant": v.variant,
                    "top_labels": dict(v.labels.most_common(3)),
                    "e2e_ms": {
                        "p50": round(e2e.p50, 2),
                        "p90": round(e2e.p90, 2),
                        "p99": round(e2e.p99, 2),
                        "max": round(e2e.max, 2),
                    },
                    "inference_ms": {"p50": round(inf.p50, 2), "p99": round(inf.p99, 2)},
                }
        return {
            "mesh": self.cfg.mesh,
            "duration_s": round(duration_s, 2),
            "apps": apps,
            "all_served": all(a["results"] > 0 for a in apps.values()),
            "bad_messages": self.bad.snapshot(),
        }
