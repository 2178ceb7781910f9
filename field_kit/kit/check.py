"""``faillite kit check``: is a deployed kit ready? One line per check, pass or fail, with the fix.

Through the broker, from any machine holding a mesh config and an identity's secret (an
operator's observer account, or a node's own config): the broker reachable with TLS and its
certificate verified, certificates valid and not expiring within 30 days, the login accepted,
every worker, camera and coordinator of the config up (a retained ``online`` birth whose
incarnation the live heartbeats or frames carry, a leader of a configured coordinator id),
every app of the config served (its retained route ``serving`` or ``degraded`` on a worker that
is up, and a result of it from that worker within ``results_s``; waited for, up to that bound),
and each worker's clock against this machine's (the offset of its heartbeats' time stamps; the
spread between workers says more than this machine's own clock). On a node (``--staged-dir``):
disk space, every staged model file present with its sha256, and with ``--engines-dir`` a
TensorRT engine for every staged variant. With ``--drill``, once every check passes,
KILL_PRIMARY on the live kit (:mod:`field_kit.kit.livedrill`): an app's primary worker killed
by the operator's command, another worker serving it within the bound, the leader unmoved.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
import socket
import ssl
import statistics
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from cryptography import x509

from faillite import messages
from faillite.config import ConfigError, MeshConfig
from faillite.identity import Identity
from faillite.mqtt import Inbound, MeshClient, Raw
from faillite.tls import client_context
from faillite.topics import (
    APP_ROUTE,
    COORDINATOR_STATUS,
    SENSOR_STATUS,
    WORKER_STATUS,
    Role,
    Topics,
)

EXPIRY_MARGIN: Final = dt.timedelta(days=30)
RESULTS_WITHIN_S: Final = 10.0  # an app is served if a result of it came this recently
SERVED_STATES: Final = frozenset({"serving", "degraded"})


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""

    def line(self) -> str:
        mark = "PASS" if self.ok else "FAIL"
        fix = f"\n       fix: {self.fix}" if (self.fix and not self.ok) else ""
        return f"{mark} {self.name}: {self.detail}{fix}"


def check_tls(cfg: MeshConfig, mission_days: float = EXPIRY_MARGIN.days) -> list[Check]:
    """The broker answers a TLS handshake whose certificate chain and host the CA verifies,
    and the certificates here stay valid through the mission (``mission_days`` from now)."""
    b = cfg.broker
    out: list[Check] = []
    if b.tls is None:
        return [Check("broker_tls", False, "the config has no broker.tls", "faillite kit render")]
    try:
        with (
            socket.create_connection((b.host, b.port), timeout=5) as raw,
            client_context(b.tls).wrap_socket(raw, server_hostname=b.host) as tls,
        ):
            peer = tls.getpeercert(binary_form=True)
            version = tls.version()
    except (OSError, ssl.SSLError) as exc:
        return [
            Check(
                "broker_tls",
                False,
                f"{b.host}:{b.port}: {exc}",
                "is the broker's unit running on its node, its port open, its certificate "
                "issued for this address (faillite kit render)?",
            )
        ]
    out.append(Check("broker_tls", True, f"{b.host}:{b.port}, {version}, certificate verified"))
    now = dt.datetime.now(dt.timezone.utc)
    certs = [("broker certificate", x509.load_der_x509_certificate(peer))] if peer else []
    certs.append(("kit CA", x509.load_pem_x509_certificate(b.tls.ca_certs.read_bytes())))
    if b.tls.certfile is not None:
        certs.append(
            ("client certificate", x509.load_pem_x509_certificate(b.tls.certfile.read_bytes()))
        )
    for what, cert in certs:
        left = cert.not_valid_after_utc - now
        ok = cert.not_valid_before_utc <= now and left > dt.timedelta(days=mission_days)
        out.append(
            Check(
                "certificates",
                ok,
                f"{what} valid until {cert.not_valid_after_utc:%Y-%m-%d} ({left.days} days; "
                f"the mission needs {mission_days:g})",
                "faillite kit render --rotate --yes, then install the new files on every node",
            )
        )
    return out


@dataclass(frozen=True, slots=True)
class RouteSeen:
    """An app's retained route as this reader understood it; ``state`` as text."""

    worker: str
    variant: str
    state: str

    @classmethod
    def read(cls, payload: bytes) -> RouteSeen | None:
        """A :class:`messages.Route`; None if it is none. A state this version does not know
        (a newer coordinator's) is kept as text: not served, rather than no route."""
        try:
            r = messages.decode(messages.Route, payload)
        except messages.MessageError:
            try:
                d = json.loads(payload)
            except ValueError:
                return None
            state = d.get("state") if isinstance(d, dict) else None
            if not isinstance(state, str) or state in SERVED_STATES:
                return None  # not a route, or not one to believe
            return cls("", "", state)
        return cls(r.worker, r.variant, str(r.state))


@dataclass
class _Seen:
    births: dict[str, messages.WorkerStatus | messages.SensorStatus] = field(default_factory=dict)
    heartbeats: dict[str, list[tuple[float, messages.Heartbeat]]] = field(default_factory=dict)
    frames: dict[str, int] = field(default_factory=dict)
    leader: messages.CoordinatorStatus | None = None
    routes: dict[str, RouteSeen] = field(default_factory=dict)
    # app -> worker -> when (monotonic) its last result of the app came
    results: dict[str, dict[str, float]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


def check_mesh(
    cfg: MeshConfig,
    identity: Identity,
    *,
    wait_s: float,
    tolerance_s: float,
    results_s: float = RESULTS_WITHIN_S,
    planned: Mapping[str, str] | None = None,
) -> list[Check]:
    """Login, every role up with its live incarnation, the leader, every app served (by the
    worker ``planned`` names: app -> worker, from ``kit stage``), the workers' clocks. Listens
    ``wait_s``, and while an app is not served yet, up to ``results_s``."""
    t = Topics(cfg.mesh)
    seen = _Seen()
    try:
        client = MeshClient(identity.name, cfg.broker, quiet=True)
    except ConfigError as exc:
        return [Check("login", False, str(exc), "copy this identity's secret to this machine")]

    def on_worker(inb: Inbound[messages.WorkerStatus]) -> None:
        with seen.lock:
            seen.births[f"worker {inb.message.worker}"] = inb.message

    def on_sensor(inb: Inbound[messages.SensorStatus]) -> None:
        with seen.lock:
            seen.births[f"camera {inb.message.sensor}"] = inb.message

    def on_leader(inb: Inbound[messages.CoordinatorStatus]) -> None:
        with seen.lock:
            if inb.message.state == "leader":
                seen.leader = inb.message

    def on_heartbeat(inb: Inbound[messages.Heartbeat]) -> None:
        with seen.lock:
            seen.heartbeats.setdefault(inb.message.worker, []).append((time.time(), inb.message))

    def on_frame(raw: Raw) -> None:
        sensor = raw.topic.split("/")[-2]
        with seen.lock:
            seen.frames[sensor] = seen.frames.get(sensor, 0) + 1

    def on_route(raw: Raw) -> None:
        app = raw.topic.split("/")[-2]
        route = RouteSeen.read(raw.payload) if raw.payload else None
        with seen.lock:
            if route is not None:
                seen.routes[app] = route
            elif not raw.payload:  # the retained route was cleared
                seen.routes.pop(app, None)

    def on_result(raw: Raw) -> None:
        # .../apps/{app}/results/{worker}: the broker lets only that worker write there, so
        # the topic says who served it; that one came is all this check needs.
        parts = raw.topic.split("/")
        with seen.lock:
            seen.results.setdefault(parts[-3], {})[parts[-1]] = time.monotonic()

    client.subscribe_json(t.filter(WORKER_STATUS), messages.WorkerStatus, on_worker)
    client.subscribe_json(t.filter(SENSOR_STATUS), messages.SensorStatus, on_sensor)
    client.subscribe_json(t.filter(COORDINATOR_STATUS), messages.CoordinatorStatus, on_leader)
    client.subscribe_json(
        f"{t.prefix}/workers/+/heartbeat", messages.Heartbeat, on_heartbeat, qos=0
    )
    client.subscribe(f"{t.prefix}/sensors/+/frames", on_frame, qos=0)
    client.subscribe(t.filter(APP_ROUTE), on_route)
    client.subscribe(t.app_results_filter(), on_result, qos=0)
    client.start(connect_timeout=None)
    try:
        deadline = time.monotonic() + 10
        while not client.wait_connected(0.1):
            if time.monotonic() > deadline:
                return [
                    Check(
                        "login",
                        False,
                        f"{identity.name} was not let in",
                        f"does the broker's password file hold {identity.name}, and this "
                        "machine its secret (broker.secrets_dir)? faillite accounts list",
                    )
                ]
        # Roles and clocks: what came in wait_s. Apps: until every one is served, or results_s
        # passed (routes are retained and come at once; results need a frame served).
        start = time.monotonic()
        while True:
            ended = time.monotonic()
            if ended - start >= wait_s:
                with seen.lock:
                    served = all(c.ok for c in _apps(cfg, seen, ended, results_s, planned))
                if served or ended - start >= max(wait_s, results_s):
                    break
            time.sleep(0.1)
    finally:
        client.stop()
    out = [Check("login", True, f"as {identity.name}")]
    with seen.lock:
        for w in cfg.workers:
            out.append(_worker_up(w.id, seen))
        for s in cfg.sensors:
            out.append(_camera_up(s.id, seen))
        ids = cfg.coordinator.ids
        leader = seen.leader
        ok = leader is not None and (not ids or leader.coordinator in ids)
        out.append(
            Check(
                "coordinator",
                ok,
                f"leader {leader.coordinator}, term {leader.term}" if leader else "no leader",
                "start faillite-coordinator.service on a coordinator node",
            )
        )
        out += _apps(cfg, seen, ended, results_s, planned)  # as judged when listening ended
        out.append(_clocks(seen, tolerance_s))
    return out


def _worker_up(worker: str, seen: _Seen) -> Check:
    return _role_up(f"worker {worker}", seen, [hb for _t, hb in seen.heartbeats.get(worker, [])])


def _apps(
    cfg: MeshConfig,
    seen: _Seen,
    now: float,
    results_s: float,
    planned: Mapping[str, str] | None = None,
) -> list[Check]:
    """Under ``seen.lock``: one line per app of the config, served or why not."""
    live = {w.id for w in cfg.workers if _worker_up(w.id, seen).ok}
    return [
        app_served(
            a.id,
            seen.routes.get(a.id),
            live,
            seen.results.get(a.id, {}),
            now,
            results_s,
            (planned or {}).get(a.id),
        )
        for a in cfg.apps
    ]


def app_served(
    app: str,
    route: RouteSeen | None,
    live: set[str],
    results: dict[str, float],
    now: float,
    results_s: float,
    planned: str | None = None,
) -> Check:
    """Is ``app`` served: a retained route ``serving`` or ``degraded`` on a worker that is up
    (``live``), and a result from that worker (``results``: worker -> when its last one came)
    within ``results_s``? With ``planned`` (its primary as the kit was staged): by that
    worker, not by a backup."""
    if route is None:
        return Check(
            "apps",
            False,
            f"{app} not served: no route retained",
            "is a coordinator leading (the coordinator check)? its log says what it planned",
        )
    state = route.state
    if state == "shed":
        return Check(
            "apps",
            False,
            f"{app} not served: shed under overload",
            "the workers cannot keep up: free their CPU or add a worker; the coordinator "
            "resumes it when there is room",
        )
    if state not in SERVED_STATES or not route.worker:
        why = "unserved" if state == "unserved" else f"route state {state!r}"
        return Check(
            "apps",
            False,
            f"{app} not served: {why} (no worker can serve it)",
            "start a worker that can run it (the roles checks), or read the coordinator's "
            "log: failover, unrecoverable",
        )
    if route.worker not in live:
        return Check(
            "apps",
            False,
            f"{app} not served: route to a dead worker {route.worker}",
            f"start {route.worker} again, or read the leader's log: it has not failed it over",
        )
    at = results.get(route.worker)
    if at is None or now - at > results_s:
        return Check(
            "apps",
            False,
            f"{app} not served: no results in {results_s:g} s from {route.worker}",
            f"is its camera sending frames (the roles checks)? read {route.worker}'s log",
        )
    if planned is not None and route.worker != planned:
        return Check(
            "apps",
            False,
            f"{app} served by {route.worker}, not by {planned}, its planned primary: the kit "
            "would go out on a backup",
            f"is {planned} up (the roles checks)? If the leader re-planned (its log, event "
            "profile_measured), stage the kit again and reinstall what changed",
        )
    return Check(
        "apps",
        True,
        f"{app} served by {route.worker} ({route.variant}, {state}), "
        f"last result {now - at:.1f} s ago",
    )


def _role_up(name: str, seen: _Seen, heartbeats: list[messages.Heartbeat]) -> Check:
    birth = seen.births.get(name)
    fix = f"start its unit on its node ({name.split()[0]} {name.split()[1]}) and read its log"
    if birth is None or birth.state != "online":
        return Check("roles", False, f"{name}: no online birth retained", fix)
    live = {hb.incarnation for hb in heartbeats}
    if birth.incarnation not in live:
        return Check(
            "roles", False, f"{name}: birth {birth.incarnation} but no heartbeat of it", fix
        )
    return Check("roles", True, f"{name} up, incarnation {birth.incarnation}")


def _camera_up(sensor: str, seen: _Seen) -> Check:
    name = f"camera {sensor}"
    birth = seen.births.get(name)
    if birth is None or birth.state != "online":
        return Check("roles", False, f"{name}: no online birth retained", "start its sensor unit")
    if not seen.frames.get(sensor):
        return Check("roles", False, f"{name}: online but no frames", "check its source")
    return Check("roles", True, f"{name} up, incarnation {birth.incarnation}")


def _clocks(seen: _Seen, tolerance_s: float) -> Check:
    offsets = {
        w: statistics.median(hb.ts - at for at, hb in hbs)
        for w, hbs in seen.heartbeats.items()
        if hbs
    }
    if not offsets:
        return Check("clocks", False, "no heartbeats to measure", "start the workers")
    spread = max(offsets.values()) - min(offsets.values())
    worst = max(offsets.items(), key=lambda kv: abs(kv[1]))
    each = ", ".join(f"{w} {o:+.3f} s" for w, o in sorted(offsets.items()))
    detail = f"workers' clocks against this machine: {each}; spread {spread:.3f} s"
    ok = spread <= tolerance_s and abs(worst[1]) <= tolerance_s
    return Check(
        "clocks", ok, detail, f"run chrony or timesyncd on {worst[0]} (tolerance {tolerance_s} s)"
    )


def check_node(models_dir: Path, engines_dir: Path | None = None) -> list[Check]:
    """On a node: disk space, staged files and their checksums, TensorRT engines."""
    manifest_path = models_dir / "stage.json"
    if not manifest_path.is_file():
        return [
            Check("models", False, f"{manifest_path}: none", "faillite kit stage, then install")
        ]
    manifest = json.loads(manifest_path.read_text())
    out: list[Check] = []
    free_mb = shutil.disk_usage(models_dir).free / 2**20
    budget, used = float(manifest["budget_mb"]), float(manifest["used_mb"])
    out.append(
        Check(
            "disk",
            free_mb >= max(0.0, budget - used) * 0.1,
            f"{free_mb:.0f} MB free beside {used:.0f} MB of models (budget {budget:.0f} MB)",
            "free space on the models' file system",
        )
    )
    bad = []
    for f in manifest["files"]:
        path = models_dir / f["file"]
        if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != f["sha256"]:
            bad.append(f["file"])
    out.append(
        Check(
            "models",
            not bad,
            f"{len(manifest['files']) - len(bad)} of {len(manifest['files'])} staged files intact"
            + (f"; bad: {', '.join(bad)}" if bad else ""),
            "install the node's bundle again (faillite kit install)",
        )
    )
    out.append(
        _loadable(models_dir, [f["file"] for f in manifest["files"] if f["file"] not in bad])
    )
    if engines_dir is not None:
        n = len(manifest["files"])
        missing = [
            f["variant"]
            for f in manifest["files"]
            if not (engines_dir / f"{f['variant']}.engine").is_file()
        ]
        out.append(
            Check(
                "engines",
                not missing,
                f"TensorRT engines for {n - len(missing)} of {n} staged variants"
                + (f"; missing: {', '.join(missing)}" if missing else ""),
                "faillite profile --backend tensorrt on this node builds them",
            )
        )
    return out


def _loadable(models_dir: Path, files: list[str]) -> Check:
    """Each intact staged ONNX file opens in ONNX Runtime on the CPU: a backup that cannot
    load is no backup. Skipped, and said, where ONNX Runtime is not installed (not a worker)."""
    onnx = [f for f in files if f.endswith(".onnx")]
    try:
        import onnxruntime as ort
    except ImportError:
        return Check("loadable", True, f"{len(onnx)} model files not opened: no ONNX Runtime here")
    failed = []
    for name in onnx:
        try:
            ort.InferenceSession(str(models_dir / name), providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own untyped errors for bad files
            failed.append(f"{name} ({str(exc).splitlines()[0][:80]})")
    return Check(
        "loadable",
        not failed,
        f"{len(onnx) - len(failed)} of {len(onnx)} staged model files open in ONNX Runtime"
        + (f"; not: {', '.join(failed)}" if failed else ""),
        "faillite models build on the laptop, stage and bundle again",
    )


def run_checks(
    cfg: MeshConfig,
    observer: str,
    *,
    planned: Mapping[str, str] | None = None,
    wait_s: float = 3.0,
    tolerance_s: float = 0.5,
    results_s: float = RESULTS_WITHIN_S,
    models_dir: Path | None = None,
    engines_dir: Path | None = None,
    mission_days: float = EXPIRY_MARGIN.days,
) -> list[Check]:
    checks = check_tls(cfg, mission_days)
    if all(c.ok for c in checks if c.name == "broker_tls"):
        identity = Identity(cfg.mesh, Role.OBSERVER, observer)
        checks += check_mesh(
            cfg,
            identity,
            wait_s=wait_s,
            tolerance_s=tolerance_s,
            results_s=results_s,
            planned=planned,
        )
    if models_dir is not None:
        checks += check_node(models_dir, engines_dir)
    return checks


def read_plan(path: Path) -> dict[str, str]:
    """``kit stage``'s plan (``_operator/plan.json``): app -> its planned primary worker."""
    try:
        doc = json.loads(path.read_text())
        return {str(app): str(p["worker"]) for app, p in doc["apps"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"{path}: not a plan kit stage wrote ({exc})") from exc
