"""systemd's service notifications (``sd_notify(3)``), standard library only.

A role that runs as a ``Type=notify`` unit (``faillite kit render`` writes them) tells systemd:

- ``READY=1``: start-up is done (units ordered ``After=`` it start now; ``systemctl start``
  returns; the watchdog is armed);
- ``STOPPING=1``: it is shutting down, as asked;
- ``WATCHDOG=1``: it is still alive. With ``WatchdogSec=`` set, systemd puts the timeout in
  ``$WATCHDOG_USEC`` (and the main process id in ``$WATCHDOG_PID``); a unit that does not ping
  within it is killed (SIGABRT) and, with ``Restart=always``, started again;
- ``STATUS=...``: one line that ``systemctl status`` shows.

Each datagram carries newline-separated assignments and goes to ``$NOTIFY_SOCKET``: a path, or
with a leading ``@`` a name in the abstract namespace. Without ``$NOTIFY_SOCKET`` (not under
systemd, or not ``Type=notify``) every call here does nothing.

:class:`Watchdog` pings only while its ``alive()`` says so: a role whose loops hung (a
deadlocked process is still "running") stops being pinged and systemd restarts it.
:class:`Beats` is what roles build ``alive()`` from: each loop marks its progress.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable

from faillite.log import get_logger

log = get_logger("sdnotify")

SEND_TIMEOUT_S = 1.0  # a full queue at systemd's end must not block a role for long
_warned = threading.Lock()  # held for good after the first failure: one warning per process


def notify(*states: str) -> bool:
    """Send ``states`` (``"READY=1"``, ``"STATUS=..."``) to systemd in one datagram. False when
    there is nobody to tell (``$NOTIFY_SOCKET`` unset) or sending failed (logged once)."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.settimeout(SEND_TIMEOUT_S)
            sock.sendto("\n".join(states).encode(), address)
    except OSError as exc:
        if _warned.acquire(blocking=False):
            log.warning(
                "sd_notify_failed",
                socket=os.environ.get("NOTIFY_SOCKET"),
                states=list(states),
                error=str(exc),
            )
        return False
    return True


def watchdog_period() -> float | None:
    """Seconds between two pings: half of ``$WATCHDOG_USEC``. None when this process has no
    watchdog: the variable is unset or malformed, or ``$WATCHDOG_PID`` names another process
    (the variables were inherited from a parent)."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 2e6 if value > 0 else None


class Beats:
    """Progress marks of a role's loops, for its ``alive()``: each loop calls :meth:`beat`
    once per iteration; :meth:`stale` names a loop that has not beaten for too long. A loop
    that has never beaten is not judged (it has not started yet)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._marks: dict[str, tuple[float, float]] = {}  # name -> (monotonic, allowance)

    def beat(self, name: str, *, allow_s: float = 0.0) -> None:
        """Loop ``name`` made progress now. ``allow_s``: it is about to do something known to
        be slow (load models): it may stay silent that long, whatever :meth:`stale` allows."""
        with self._lock:
            self._marks[name] = (time.monotonic(), allow_s)

    def stale(self, max_age_s: float) -> str | None:
        """Why a loop looks hung (the first one silent for more than ``max_age_s``), or None."""
        now = time.monotonic()
        with self._lock:
            marks = sorted(self._marks.items())
        for name, (at, allow_s) in marks:
            limit = max(max_age_s, allow_s)
            if now - at > limit:
                return f"{name} loop silent for {now - at:.1f} s (limit {limit:g} s)"
        return None


class Watchdog:
    """Pings systemd's watchdog from a thread of its own while ``alive()`` returns None.

    The first reason ``alive()`` gives is logged (``watchdog_withheld``) and shown as the unit's
    status, and the pings stop for good: systemd kills the process once ``WatchdogSec`` has
    passed and restarts it. Nothing happens where systemd asked for no watchdog."""

    def __init__(self, alive: Callable[[], str | None], *, name: str) -> None:
        self.alive = alive
        self.name = name
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> bool:
        """Start pinging if this process has a watchdog (see :func:`watchdog_period`)."""
        period = watchdog_period()
        if period is None:
            return False
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, args=(period,), name=f"watchdog-{self.name}", daemon=True
            )
            self._thread.start()
        return True

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def _run(self, period: float) -> None:
        while not self._stop.is_set():
            try:
                reason = self.alive()
            except Exception as exc:  # a broken check must not look like a healthy role
                reason = f"alive() raised {exc!r}"
            if reason is not None:
                log.warning("watchdog_withheld", watchdog=self.name, reason=reason)
                notify(f"STATUS=watchdog withheld: {reason}")
                return
            notify("WATCHDOG=1")
            self._stop.wait(period)
