"""The backend registry: a backend's ``type`` -> (its config class, its class).

A backend is one module of this package that registers itself, its config class beside it::

    class FooBackendConfig(BackendSection):
        type: Literal["foo"] = "foo"
        some_setting: int = 0


    @register(FooBackendConfig)
    class FooBackend(Backend):
        type: ClassVar[str] = "foo"
        ...

Every module of the package is imported on first use (discovery), so adding a backend is adding
one module. :mod:`faillite.config` validates a worker's ``backend`` section through
:func:`parse_config` when a mesh config is loaded, on every node (a broker node too): backend
modules must therefore stay light at import time (no numpy, cv2 or runtime imports at module
level; see :mod:`workers.backends.base`).
"""

from __future__ import annotations

import importlib
import pkgutil
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic_core import PydanticCustomError

from faillite.config import BackendSection
from workers.backends.base import Backend, BackendUnavailableError

B = TypeVar("B", bound=type[Backend])
NOT_BACKENDS = frozenset({"base", "registry"})


@dataclass(frozen=True, slots=True)
class Registered:
    name: str  # the backend's ``type``
    config: type[BackendSection]
    backend: type[Backend]


_registry: dict[str, Registered] = {}
_discovered = False
_lock = threading.RLock()


def register(config: type[BackendSection]) -> Callable[[B], B]:
    """Class decorator: register a backend class with its config class under its ``type``."""

    def deco(cls: B) -> B:
        field = config.model_fields.get("type")
        if field is None or field.default != cls.type:
            raise TypeError(
                f"{config.__name__} must default its 'type' to {cls.type!r} (the type of "
                f"{cls.__name__})"
            )
        with _lock:
            old = _registry.get(cls.type)
            if old is not None and old.backend is not cls:
                raise TypeError(f"backend type {cls.type!r} registered twice")
            _registry[cls.type] = Registered(cls.type, config, cls)
        return cls

    return deco


def _discover() -> None:
    """Import every backend module of this package once: each registers itself."""
    global _discovered
    with _lock:
        if _discovered:
            return
        package = importlib.import_module(__name__.rpartition(".")[0])
        for info in pkgutil.iter_modules(package.__path__):
            if info.name not in NOT_BACKENDS and not info.name.startswith("_"):
                importlib.import_module(f"{package.__name__}.{info.name}")
        _discovered = True


def backends() -> dict[str, Registered]:
    """Every registered backend, by type."""
    _discover()
    with _lock:
        return dict(_registry)


def known_types() -> tuple[str, ...]:
    return tuple(sorted(backends()))


def entry(backend_type: str) -> Registered:
    """The registration of ``backend_type``; KeyError naming the known types if none."""
    found = backends().get(backend_type)
    if found is None:
        raise KeyError(f"unknown backend type {backend_type!r}; known: {', '.join(known_types())}")
    return found


def parse_config(data: Any) -> BackendSection:
    """A worker's ``backend`` section as its backend's config class (pydantic validator).

    Unknown keys and bad values raise pydantic's own errors (located inside the section);
    an unknown or missing ``type`` raises one naming the known types."""
    known = ", ".join(known_types())
    if isinstance(data, BackendSection):
        reg = backends().get(data.type)
        if reg is None or not isinstance(data, reg.config):
            raise PydanticCustomError(
                "backend_type",
                "{cls} is not the config class of a known backend (known: {known})",
                {"cls": type(data).__name__, "known": known},
            )
        return data
    if not isinstance(data, Mapping):
        raise PydanticCustomError(
            "backend_section",
            "a backend section is a mapping with a 'type' (one of: {known})",
            {"known": known},
        )
    backend_type = data.get("type")
    if backend_type is None:
        raise PydanticCustomError(
            "backend_type", "a backend section needs a 'type' (one of: {known})", {"known": known}
        )
    reg = backends().get(backend_type) if isinstance(backend_type, str) else None
    if reg is None:
        raise PydanticCustomError(
            "backend_type",
            "unknown backend type {type}; this build knows: {known}",
            {"type": repr(backend_type), "known": known},
        )
    return reg.config.model_validate(data)


def create_backend(cfg: BackendSection) -> Backend:
    """Instantiate the backend that ``cfg.type`` names, with its config."""
    reg = entry(cfg.type)
    if not isinstance(cfg, reg.config):
        raise TypeError(f"{reg.name} backend wants {reg.config.__name__}, not {type(cfg).__name__}")
    return reg.backend(cfg)


def create_backend_or_fallback(
    cfg: BackendSection,
    fallback: BackendSection | None,
    on_fallback: Callable[[str, str], None],
) -> Backend:
    """``cfg``'s backend, or ``fallback``'s when ``cfg``'s cannot run here (its runtime missing
    or mismatched, no device): ``on_fallback(backend type, why)`` is told, once."""
    try:
        return create_backend(cfg)
    except BackendUnavailableError as exc:
        if fallback is None:
            raise
        on_fallback(cfg.type, str(exc))
        return create_backend(fallback)
