"""Failures to simulate: explicit traces (JSON), seeded Poisson arrivals, the single-failure sweep.

A trace is a JSON list (or ``{"failures": [...]}``) of objects::

    {"time_s": 60, "servers": ["a2-03"], "repair_s": 900}
    {"time_s": 4000, "domain": "rack07", "repair_s": 1800}

``time_s`` is when the failure happens, ``repair_s`` how long until the servers are back.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coordinator.planner import Problem
from field_kit.simulate.errors import TraceError


@dataclass(frozen=True, slots=True)
class Failure:
    time_ms: float
    servers: tuple[str, ...]
    repair_ms: float  # how long until the servers are back
    label: str = ""

    @property
    def repair_at_ms(self) -> float:
        return self.time_ms + self.repair_ms

    def to_json(self) -> dict[str, object]:
        return {
            "time_s": round(self.time_ms / 1000.0, 6),
            "servers": list(self.servers),
            "repair_s": round(self.repair_ms / 1000.0, 6),
            "label": self.label,
        }


def _number(entry: dict[str, Any], key: str, where: str) -> float:
    value = entry.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TraceError(f"{where}: {key!r} must be a number of seconds, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise TraceError(f"{where}: {key!r} must be finite and >= 0, got {value!r}")
    return float(value)


def parse_trace(data: object, problem: Problem, source: str = "trace") -> tuple[Failure, ...]:
    """Failures of a decoded trace, checked against the problem's servers and domains."""
    if isinstance(data, dict) and "failures" in data:
        data = data["failures"]
    if not isinstance(data, list) or not data:
        raise TraceError(f"{source}: expected a non-empty JSON list of failures")
    domains = problem.domains()
    out: list[Failure] = []
    for i, entry in enumerate(data):
        where = f"{source}: failure {i}"
        if not isinstance(entry, dict):
            raise TraceError(f"{where}: expected an object, got {type(entry).__name__}")
        unknown = sorted(set(entry) - {"time_s", "servers", "domain", "repair_s", "label"})
        if unknown:
            raise TraceError(f"{where}: unknown key(s) {', '.join(unknown)}")
        t = _number(entry, "time_s", where)
        repair = _number(entry, "repair_s", where)
        if repair <= 0:
            raise TraceError(f"{where}: 'repair_s' must be > 0")
        has_servers, has_domain = "servers" in entry, "domain" in entry
        if has_servers == has_domain:
            raise TraceError(f"{where}: give exactly one of 'servers' (a list) or 'domain'")
        if has_servers:
            servers = entry["servers"]
            if (
                not isinstance(servers, list)
                or not servers
                or not all(isinstance(s, str) for s in servers)
            ):
                raise TraceError(f"{where}: 'servers' must be a non-empty list of server ids")
            missing = [s for s in servers if not problem.has_server(s)]
            if missing:
                raise TraceError(f"{where}: unknown server(s) {', '.join(missing)}")
            ids = tuple(dict.fromkeys(servers))
            label = "servers " + ",".join(ids)
        else:
            dom = entry["domain"]
            if not isinstance(dom, str) or dom not in domains:
                raise TraceError(
                    f"{where}: unknown domain {dom!r} (domains: {', '.join(sorted(domains))})"
                )
            ids = domains[dom]
            label = f"domain {dom}"
        label = str(entry.get("label", label))
        out.append(Failure(t * 1000.0, ids, repair * 1000.0, label))
    return tuple(sorted(out, key=lambda f: f.time_ms))


def load_trace(path: str | Path, problem: Problem) -> tuple[Failure, ...]:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise TraceError(f"cannot read trace {path}: {exc.strerror}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TraceError(f"{path}: not JSON ({exc.msg} at line {exc.lineno})") from exc
    return parse_trace(data, problem, str(path))


def sweep_cases(
    problem: Problem, repair_ms: float, limit: int | None = None
) -> tuple[Failure, ...]:
    """One failure per server (each alone, from the initial plan), at time 0. With ``limit``,
    that many servers spread evenly over the list (every k-th), deterministic."""
    ids = [s.id for s in problem.servers]
    if limit is not None and 0 < limit < len(ids):
        step = len(ids) / limit
        ids = [ids[int(i * step)] for i in range(limit)]
    return tuple(Failure(0.0, (s,), repair_ms, f"server {s}") for s in ids)


@dataclass(frozen=True, slots=True)
class FailureModel:
    """Poisson failures of single servers and of whole failure domains; lognormal repairs."""

    server_mtbf_h: float = 2000.0
    domain_mtbf_h: float = 20000.0  # only domains of two or more servers
    repair_median_min: float = 30.0
    repair_sigma: float = 0.8

    def draw(
        self,
        problem: Problem,
        duration_h: float,
        seed: int,
        max_failures: int | None = None,
    ) -> tuple[Failure, ...]:
        rng = random.Random(f"faillite-simulate-failures-{seed}")
        horizon = duration_h * 3600_000.0
        found: list[Failure] = []

        def arrivals(mtbf_h: float, servers: Sequence[str], label: str) -> None:
            if mtbf_h <= 0 or not math.isfinite(mtbf_h):
                return
            t = 0.0
            while True:
                t += rng.expovariate(1.0 / (mtbf_h * 3600_000.0))
                if t >= horizon:
                    return
                repair = rng.lognormvariate(
                    math.log(self.repair_median_min * 60_000.0), self.repair_sigma
                )
                found.append(Failure(round(t, 3), tuple(servers), round(repair, 3), label))

        for s in problem.servers:
            arrivals(self.server_mtbf_h, (s.id,), f"server {s.id}")
        for dom, ids in sorted(problem.domains().items()):
            if len(ids) > 1:
                arrivals(self.domain_mtbf_h, ids, f"domain {dom}")
        found.sort(key=lambda f: (f.time_ms, f.servers))
        if max_failures is not None:
            found = found[:max_failures]
        return tuple(found)

    def to_json(self) -> dict[str, float]:
        return {
            "server_mtbf_h": self.server_mtbf_h,
            "domain_mtbf_h": self.domain_mtbf_h,
            "repair_median_min": self.repair_median_min,
            "repair_sigma": self.repair_sigma,
        }
