"""``faillite watch --json`` as an operator runs it, for the kit tests: started, then read."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from faillite.compat import python_module


def watch(
    cfg: Path,
    secret: str,
    seconds: float,
    *,
    as_: str,
    wrap: Callable[[list[str]], list[str]] = lambda argv: argv,
) -> subprocess.Popen[str]:
    """``faillite watch`` for ``seconds`` as observer ``as_`` (``wrap``: run it elsewhere, e.g.
    in a network namespace)."""
    argv = [*python_module("faillite"), "watch", "-c", str(cfg), "--as", as_,
            "--duration", str(seconds), "--json"]  # fmt: skip
    return subprocess.Popen(
        wrap(argv),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "FAILLITE_MQTT_PASSWORD": secret},
    )


def watched(proc: subprocess.Popen[str], seconds: float) -> dict[str, Any]:
    """Its summary and events, once it is done."""
    out, err = proc.communicate(timeout=seconds + 60)
    lines = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
    summary = next((x["summary"] for x in lines if "summary" in x), None)
    assert summary is not None, out[-2000:] + err[-2000:]
    return {"summary": summary, "events": [x for x in lines if "summary" not in x]}
