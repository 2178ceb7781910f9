"""How the worker's parts report what happened: the service publishes each report on the
mesh's ``events`` topic; a test keeps them in a list."""

from __future__ import annotations

from typing import Any, Protocol


class EventSink(Protocol):
    def __call__(self, kind: str, app: str = "", **detail: Any) -> None:
        """Report ``kind`` (``model_loaded``, ``serve_stopped``, ...) with its details."""
