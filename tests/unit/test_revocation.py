"""faillite.revocation: telling a running broker about a revocation (``broker.pid_file``).

The signal goes to this test process itself (a handler records it): nothing is spawned. The
takeover of a live certificate's session runs against real brokers in
tests/integration/test_tls.py."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import pytest

from faillite.config import BrokerConfig
from faillite.revocation import Applied, RevocationError, apply_revocation, signal_reload


@pytest.fixture
def hups() -> Iterator[list[int]]:
    """SIGHUPs this process receives while the test runs."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers need the main thread")
    got: list[int] = []

    def handler(signum: int, _frame: FrameType | None) -> None:
        got.append(signum)

    old = signal.signal(signal.SIGHUP, handler)
    try:
        yield got
    finally:
        signal.signal(signal.SIGHUP, old)


def _pid_file(tmp_path: Path, text: str, mode: int = 0o644) -> Path:
    path = tmp_path / "broker.pid"
    path.write_text(text)
    path.chmod(mode)
    return path


def test_the_broker_named_by_the_pid_file_is_signalled(tmp_path: Path, hups: list[int]) -> None:
    path = _pid_file(tmp_path, f"{os.getpid()}\n")
    assert signal_reload(path) == os.getpid()
    assert hups == [signal.SIGHUP]
    cfg = BrokerConfig(pid_file=path)
    assert apply_revocation(cfg, name=None, ca_dir=None) == Applied(pid=os.getpid())
    # A certificate on a broker without client certificates: nothing to take over.
    assert apply_revocation(cfg, name="m.worker.w1", ca_dir=tmp_path) == Applied(pid=os.getpid())
    assert hups == [signal.SIGHUP] * 3


def test_no_pid_file_nothing_to_tell() -> None:
    assert apply_revocation(BrokerConfig(), name="m.worker.w1", ca_dir=None) == Applied(pid=None)


def _pid_max() -> int:
    return int(Path("/proc/sys/kernel/pid_max").read_text())


@pytest.mark.parametrize(
    ("text", "mode", "problem"),
    [
        ("garbage", 0o644, "holds no pid"),
        ("1", 0o644, "holds no pid"),  # never init
        ("-5", 0o644, "holds no pid"),
        (str(os.getpid()), 0o666, "writable by others"),
        (str(os.getpid()), 0o664, "writable by others"),
    ],
)
def test_a_pid_file_that_names_nothing_trustworthy_is_refused(
    tmp_path: Path, hups: list[int], text: str, mode: int, problem: str
) -> None:
    with pytest.raises(RevocationError, match=problem):
        signal_reload(_pid_file(tmp_path, text, mode))
    assert hups == []


def test_a_stale_or_missing_pid_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(RevocationError, match="stale"):
        signal_reload(_pid_file(tmp_path, str(_pid_max() + 1)))
    with pytest.raises(RevocationError, match="cannot read the broker's pid file"):
        signal_reload(tmp_path / "absent.pid")
