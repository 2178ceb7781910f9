"""The worker's plug-in point, and the drills' faults plug-in on it (SIGUSR1 hang, SIGUSR2 slow)."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator

import pytest

from field_kit.drill import faults
from workers.frame_queue import QueuedFrame
from workers.plugins import FrameInterceptor, PluginError, load_plugin


class Host:
    def __init__(self) -> None:
        self.interceptors: list[FrameInterceptor] = []


@pytest.fixture
def host() -> Iterator[Host]:
    saved = {s: signal.getsignal(s) for s in (signal.SIGUSR1, signal.SIGUSR2)}
    try:
        yield Host()
    finally:
        for s, h in saved.items():
            signal.signal(s, h)


def _deliver(sig: signal.Signals) -> None:
    os.kill(os.getpid(), sig)
    time.sleep(0.01)  # the handler runs on the main thread at the next bytecode


FRAME = QueuedFrame("a1", b"", 0)


def test_faults_plugin_hangs_and_slows_the_inference_path(host: Host) -> None:
    load_plugin("field_kit.drill.faults", host)
    (intercept,) = host.interceptors
    assert isinstance(intercept, faults.Faults)
    stop = threading.Event()
    t0 = time.monotonic()
    intercept(FRAME, stop)  # no fault: returns at once
    assert time.monotonic() - t0 < 0.05

    _deliver(signal.SIGUSR1)  # hang
    done = threading.Event()
    t = threading.Thread(target=lambda: (intercept(FRAME, stop), done.set()))
    t.start()
    assert not done.wait(0.3)  # held
    _deliver(signal.SIGUSR1)  # cleared
    assert done.wait(1.0)
    t.join()

    _deliver(signal.SIGUSR2)  # slow
    t0 = time.monotonic()
    intercept(FRAME, stop)
    assert time.monotonic() - t0 >= faults.SLOW_S - 0.01
    _deliver(signal.SIGUSR2)  # back to normal
    t0 = time.monotonic()
    intercept(FRAME, stop)
    assert time.monotonic() - t0 < 0.05


def test_a_stopping_worker_is_not_held_by_a_fault(host: Host) -> None:
    f = faults.install(host)
    f.toggle_hang()
    f.toggle_slow()
    stop = threading.Event()
    stop.set()
    t0 = time.monotonic()
    f(FRAME, stop)
    assert time.monotonic() - t0 < 0.05


def test_a_module_without_install_is_refused(host: Host) -> None:
    with pytest.raises(PluginError, match="no install"):
        load_plugin("workers.frame_queue", host)
    with pytest.raises(PluginError, match="cannot be imported"):
        load_plugin("no_such_plugin_module", host)
    assert host.interceptors == []
