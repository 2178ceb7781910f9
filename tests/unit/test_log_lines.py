"""The roles' log stream: one JSON event per line, and a clean exit while daemon threads log."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

SPAM = textwrap.dedent(
    """
    import threading, time
    from faillite import log as flog
    flog.configure(mesh="m1", role="worker", worker="w1")
    L = flog.get_logger("t")
    def spam(i):
        while True:
            L.info("spam", thread=i, pad="x" * 300)
    for i in range(4):
        threading.Thread(target=spam, args=(i,), daemon=True).start()
    time.sleep(0.3)
    """
)


def test_daemon_threads_logging_at_exit_neither_abort_nor_break_lines() -> None:
    # Threads (network, planner) still writing while the interpreter shuts down: the process
    # exits 0 and every line it wrote is a whole JSON event with the process's ids.
    for _ in range(3):
        out = subprocess.run(
            [sys.executable, "-c", SPAM], capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 0, out.stderr[-2000:]
        lines = out.stderr.splitlines()
        assert len(lines) > 10
        for line in lines:
            ev = json.loads(line)
            assert ev["event"] == "spam" and ev["mesh"] == "m1" and ev["worker"] == "w1"


def test_native_abort_prints_every_threads_stack() -> None:
    # faulthandler is on in every role: an abort in native code leaves a trace in the log.
    code = "from faillite import log as flog; flog.configure(); import os; os.abort()"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == -6
    assert "Fatal Python error: Aborted" in out.stderr


def test_libraries_stdlib_logging_comes_out_as_the_same_json_lines() -> None:
    # asyncio, amqtt and paho log through the stdlib: their lines (a traceback included) are
    # JSON events with this process's ids, not "WARNING:asyncio:..." breaking the stream.
    import io
    import logging

    from faillite import log as flog

    stream = io.StringIO()
    flog.configure(stream=stream, mesh="m1", role="broker")
    try:
        logging.getLogger("asyncio").warning("returning %s from eof_received()", "true")
        try:
            _ = 1 // len("")
        except ZeroDivisionError:
            logging.getLogger("amqtt.broker").exception("handler failed\nsecond line")
        logging.getLogger("paho").info("below the level: dropped")
    finally:
        flog.configure()
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(e["logger"], e["level"], e["mesh"], e["role"]) for e in events] == [
        ("asyncio", "warning", "m1", "broker"),
        ("amqtt.broker", "error", "m1", "broker"),
    ]
    assert events[0]["event"] == "returning true from eof_received()"
    assert "ZeroDivisionError" in events[1]["exception"]
