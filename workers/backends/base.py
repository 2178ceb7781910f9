"""The backend plug-in interface: every inference runtime sits behind these two classes.

A backend is chosen by the ``type`` key of the worker's ``backend`` config (Frigate-style): the
registry (:mod:`workers.backends.registry`) maps that key to the backend's config class and
its class. A backend whose runtime is not installed raises :class:`BackendUnavailableError` on
creation, with the package to install.

Backend modules are imported whenever a mesh config is validated (a broker node too), so they
import nothing heavy at module level: numpy and the runtimes are imported where they are used.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from faillite.config import BackendSection


class BackendError(RuntimeError):
    """A model that cannot be loaded or run."""


class BackendUnavailableError(BackendError):
    """The runtime behind a backend is not installed or has no usable device here."""


class ModelFileMissingError(BackendError):
    """The model file named by an assignment is not on this worker's disk."""


@dataclass(frozen=True, slots=True)
class Staged:
    """A batch put where its model runs it, ahead of its turn (:meth:`LoadedModel.stage`):
    ``host`` the numpy batch, ``device`` the backend's copy of it on the device (None: the
    model reads ``host`` itself)."""

    host: npt.NDArray[np.float32]
    device: Any = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.host.shape)


class LoadedModel(abc.ABC):
    """One model variant loaded and ready to run."""

    variant: str
    providers: tuple[str, ...]
    input_shape: tuple[int, ...]
    # The most images one ``infer`` call runs at once: 1 for a model with a fixed batch of 1
    # (a larger batch then runs image by image), the backend's limit (ONNX Runtime:
    # ``max_batch``, 64 by default) for a model whose batch dimension is symbolic. A batcher
    # groups at most this many frames.
    max_batch: int = 1

    @abc.abstractmethod
    def infer(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Run one batch; returns the first output (logits)."""

    def stage(self, batch: npt.NDArray[np.float32]) -> Staged:
        """Copy ``batch`` to where the model runs it, now: the batcher's pool calls this while
        the previous batch infers, so the host-to-device copy overlaps inference. Nothing to
        copy by default."""
        return Staged(batch)

    def infer_staged(self, staged: Staged) -> npt.NDArray[np.float32]:
        """:meth:`infer` of a batch :meth:`stage` made."""
        return self.infer(staged.host)

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release device memory held by the model."""


class Backend(abc.ABC):
    """An inference runtime. Subclasses take their own config class (registered with them)."""

    type: ClassVar[str]
    file_suffix: ClassVar[str] = ".onnx"

    @abc.abstractmethod
    def __init__(self, cfg: BackendSection) -> None:
        """Open the runtime; raise :class:`BackendUnavailableError` if it cannot run here."""

    @abc.abstractmethod
    def devices(self) -> tuple[str, ...]:
        """What this backend can run on here (providers / devices), best first."""

    @abc.abstractmethod
    def load(self, variant: str, path: Path) -> LoadedModel:
        """Load ``path``; raise :class:`ModelFileMissingError` or :class:`BackendError`."""

    def start(self) -> None:  # noqa: B027 - optional hook
        """Bring the device up before the worker says it is online (CUDA context, libraries),
        and keep it up, so later loads go into an initialised runtime. Default: nothing."""

    def describe(self) -> dict[str, Any]:
        return {"type": self.type, "devices": list(self.devices())}


def check_file(variant: str, path: Path) -> None:
    if not path.is_file():
        raise ModelFileMissingError(f"model file for {variant!r} not on disk: {path}")
