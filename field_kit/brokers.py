"""Start real brokers as subprocesses on free loopback ports: amqtt (ours) and Mosquitto.

Each broker runs from its own directory (config, log, persistence). Start-up waits, bounded,
for the port to accept connections and fails with the broker's own output; stop is SIGTERM,
wait, SIGKILL. A config with ``tls`` starts a TLS broker (its files made with
``faillite.pki``, for 127.0.0.1): the readiness probe is still a plain TCP connect, which
proves the port listens without a handshake.
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final

import yaml

from broker.mosquitto import write_mosquitto_config
from faillite.compat import python_module
from faillite.config import BrokerConfig, TlsConfig
from faillite.identity import AclScope
from field_kit.procs import free_port

BROKER_KINDS: Final = ("amqtt", "mosquitto")
HOST: Final = "127.0.0.1"
START_TIMEOUT_S: Final = 20.0
STOP_TIMEOUT_S: Final = 10.0
_PORT_ATTEMPTS: Final = 3


@dataclass(frozen=True, slots=True)
class BrokerEndpoint:
    kind: str  # "amqtt" or "mosquitto"
    host: str
    port: int


class BrokerStartError(RuntimeError):
    """A broker process did not come up; the message carries its output."""


class BrokerUnavailableError(BrokerStartError):
    """The broker kind asked for is not installed here."""


def mosquitto_binary() -> str | None:
    """Path of the mosquitto binary; Debian puts it in /usr/sbin, often not on PATH."""
    path = os.environ.get("PATH", "") + os.pathsep + "/usr/sbin" + os.pathsep + "/usr/local/sbin"
    return shutil.which("mosquitto", path=path)


class BrokerProcess:
    """One running broker subprocess and its log."""

    def __init__(
        self,
        endpoint: BrokerEndpoint,
        proc: subprocess.Popen[bytes],
        log: IO[bytes],
        log_path: Path,
    ) -> None:
        self.endpoint = endpoint
        self.proc = proc
        self._log = log
        self.log_path = log_path

    def alive(self) -> bool:
        return self.proc.poll() is None

    def output_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as exc:
            return f"(no output: {exc.strerror})"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM, wait, then SIGKILL; never leaves the process behind."""
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(STOP_TIMEOUT_S)
        finally:
            self._log.close()


def _absolute_tls(tls: TlsConfig) -> TlsConfig:
    """``tls`` with every file path absolute (relative ones from this process's directory)."""
    server = tls.server
    if server is not None:
        server = server.model_copy(
            update={"certfile": server.certfile.absolute(), "keyfile": server.keyfile.absolute()}
        )
    return tls.model_copy(
        update={
            "ca_certs": tls.ca_certs.absolute(),
            "certfile": tls.certfile.absolute() if tls.certfile else None,
            "keyfile": tls.keyfile.absolute() if tls.keyfile else None,
            "server": server,
        }
    )


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


class BrokerLauncher:
    """Starts brokers in a work directory and stops every one of them in :meth:`stop_all`.

    Used by the tests' fixtures, the benchmarks and the drills: real broker processes on free
    loopback ports, each with its log, never left behind.
    """

    def __enter__(self) -> BrokerLauncher:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop_all()

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir.resolve()  # brokers run from their own directory
        self.processes: list[BrokerProcess] = []
        self._shared: dict[str, BrokerProcess] = {}
        self._count = 0

    def start(
        self,
        kind: str,
        cfg: BrokerConfig | None = None,
        *,
        mesh: str = "test",
        port: int | None = None,
        scope: AclScope | None = None,
    ) -> BrokerEndpoint:
        """Start a broker of ``kind`` with ``cfg`` on ``port`` (default: a free one); a given
        port is how a test restarts "the same" broker. ``scope``: the workers and apps its
        ACL names (default: ``+`` in their place)."""
        return self._start(kind, cfg or BrokerConfig(), mesh, port, scope).endpoint

    def shared(self, kind: str) -> BrokerEndpoint:
        """The default-config broker of ``kind`` for everyone; restarted if it died."""
        proc = self._shared.get(kind)
        if proc is None or not proc.alive():
            proc = self._start(kind, BrokerConfig(), "test")
            self._shared[kind] = proc
        return proc.endpoint

    def process(self, endpoint: BrokerEndpoint) -> BrokerProcess:
        for proc in self.processes:
            if proc.endpoint == endpoint:
                return proc
        raise KeyError(endpoint)

    def restart(self, endpoint: BrokerEndpoint) -> BrokerEndpoint:
        """Start again a broker of this launcher that died (or was stopped), from its own
        directory and config: Mosquitto comes back with the retained messages it stored."""
        old = self.process(endpoint)
        if old.alive():
            raise BrokerStartError(f"{endpoint.kind} on port {endpoint.port} is still running")
        old.stop()  # closes its log
        rundir = old.log_path.parent
        log = old.log_path.open("ab")
        popen = subprocess.Popen(
            list(old.proc.args),  # type: ignore[arg-type]
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=rundir,
            start_new_session=True,
        )
        proc = BrokerProcess(endpoint, popen, log, old.log_path)
        self.processes[self.processes.index(old)] = proc
        try:
            self._wait_ready(proc)
        except BrokerStartError:
            self.processes.remove(proc)
            proc.stop()
            raise
        return endpoint

    def stop_all(self) -> None:
        errors: list[BaseException] = []
        while self.processes:
            proc = self.processes.pop()
            try:
                proc.stop()
            except (OSError, subprocess.SubprocessError) as exc:
                errors.append(exc)
        self._shared.clear()
        if errors:
            raise BrokerStartError(f"could not stop every broker: {errors!r}")

    def _start(
        self,
        kind: str,
        cfg: BrokerConfig,
        mesh: str,
        fixed_port: int | None = None,
        scope: AclScope | None = None,
    ) -> BrokerProcess:
        if kind not in BROKER_KINDS:
            raise ValueError(f"unknown broker kind {kind!r}; expected one of {BROKER_KINDS}")
        binary = mosquitto_binary()
        if kind == "mosquitto" and binary is None:
            raise BrokerUnavailableError(
                "mosquitto binary not found: apt-get install mosquitto (CI installs it)"
            )
        last: BrokerStartError | None = None
        for _ in range(_PORT_ATTEMPTS):
            self._count += 1
            rundir = self.workdir / f"{kind}-{self._count}"
            rundir.mkdir(parents=True)
            port = fixed_port or free_port()
            update: dict[str, object] = {"host": HOST, "port": port}
            if cfg.tls is not None:  # brokers run from rundir: their files by absolute path
                update["tls"] = _absolute_tls(cfg.tls)
            bcfg = cfg.model_copy(update=update)
            if kind == "amqtt":
                cmd = self._amqtt_cmd(bcfg, mesh, rundir, scope)
            else:
                assert binary is not None
                cmd = self._mosquitto_cmd(binary, bcfg, mesh, rundir, scope)
            log_path = rundir / "broker.log"
            log = log_path.open("wb")
            popen = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, cwd=rundir, start_new_session=True
            )
            proc = BrokerProcess(BrokerEndpoint(kind, HOST, port), popen, log, log_path)
            self.processes.append(proc)
            try:
                self._wait_ready(proc)
            except BrokerStartError as exc:
                self.processes.remove(proc)
                proc.stop()
                # Only a lost race for a free port is worth a retry.
                if "in use" not in str(exc) or fixed_port:
                    raise
                last = exc
                continue
            return proc
        assert last is not None
        raise last

    @staticmethod
    def _amqtt_cmd(cfg: BrokerConfig, mesh: str, rundir: Path, scope: AclScope | None) -> list[str]:
        conf = rundir / "mesh.yaml"
        broker = cfg.model_dump(mode="json", exclude_none=True)
        conf.write_text(yaml.safe_dump({"mesh": mesh, "broker": broker}))
        names = (
            []
            if scope is None
            else [
                *(a for w in scope.workers for a in ("--worker", w)),
                *(a for app in scope.apps for a in ("--app", app)),
                *(
                    a
                    for cam, apps in scope.camera_apps
                    for app in apps
                    for a in ("--camera-app", f"{cam}={app}")
                ),
            ]
        )
        return [*python_module("broker"), "--config", str(conf),
                "--host", cfg.host, "--port", str(cfg.port), *names]  # fmt: skip

    @staticmethod
    def _mosquitto_cmd(
        binary: str, cfg: BrokerConfig, mesh: str, rundir: Path, scope: AclScope | None
    ) -> list[str]:
        # As root, Mosquitto would switch to the 'mosquitto' user, which cannot read our files.
        run_as = getpass.getuser() if os.geteuid() == 0 else None
        conf = write_mosquitto_config(cfg, mesh, rundir, run_as=run_as, scope=scope)
        return [binary, "-c", str(conf)]

    @staticmethod
    def _wait_ready(proc: BrokerProcess) -> None:
        ep = proc.endpoint
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if not proc.alive():
                raise BrokerStartError(
                    f"{ep.kind} broker exited with {proc.proc.returncode} before listening on "
                    f"{ep.host}:{ep.port}; its output:\n{proc.output_tail()}"
                )
            # Alive after accepting: the listener is ours, not a process that took the port.
            if _accepts(ep.host, ep.port) and proc.alive():
                return
            time.sleep(0.05)
        raise BrokerStartError(
            f"{ep.kind} broker did not accept connections on {ep.host}:{ep.port} within "
            f"{START_TIMEOUT_S:.0f} s; its output:\n{proc.output_tail()}"
        )
