"""Read PyTorch legacy (pre-1.6, non-zip) ``.pth`` state dicts without torch.

The legacy format is a sequence of pickles in one file::

    magic number | protocol version | sys info | state dict | storage keys | storage blobs

The state dict's tensors point at storages through persistent ids; the storages' raw bytes
follow the pickles, each as an 8-byte little-endian element count and the elements.
The unpickler below only resolves the few globals a state dict needs, so a crafted file
cannot run code: anything else is refused.
"""

from __future__ import annotations

import collections
import io
import pickle
import pickletools
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["LegacyCheckpointError", "load_legacy_state_dict"]

_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
_PROTOCOL_VERSION = 1001
_ZIP_MAGIC = b"PK\x03\x04"

# Storage class name -> element dtype. bfloat16 has no numpy dtype: read as uint16, widened later.
_STORAGE_DTYPES: dict[str, np.dtype[Any]] = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "BFloat16Storage": np.dtype("<u2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


class LegacyCheckpointError(ValueError):
    """A file that is not a readable legacy PyTorch checkpoint; the message says why."""


class _NoBuild:
    """Placeholders the file must not alter: a pickle BUILD opcode would overwrite fields."""

    def __setstate__(self, state: object) -> None:
        raise pickle.UnpicklingError(f"refusing to set state on {type(self).__name__}")


@dataclass(frozen=True)
class _StorageType(_NoBuild):
    name: str

    @property
    def dtype(self) -> np.dtype[Any]:
        return _STORAGE_DTYPES[self.name]


@dataclass
class _Storage(_NoBuild):
    key: str
    stype: _StorageType
    numel: int
    data: npt.NDArray[Any] | None = None  # filled once the blobs after the pickles are read


@dataclass(frozen=True)
class _StorageView(_NoBuild):
    """A legacy storage view (rare): ``numel`` elements of ``base`` from ``offset``."""

    base: _Storage
    offset: int
    numel: int


@dataclass(frozen=True)
class _TensorRef(_NoBuild):
    storage: _Storage | _StorageView
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor_v2(
    storage: _Storage | _StorageView,
    storage_offset: int,
    size: tuple[int, ...],
    stride: tuple[int, ...],
    requires_grad: bool = False,
    backward_hooks: object = None,
    metadata: object = None,
) -> _TensorRef:
    # The data is not read yet (it follows the pickle), so record where the tensor lives.
    del requires_grad, backward_hooks, metadata
    return _TensorRef(storage, int(storage_offset), tuple(size), tuple(stride))


class _OpcodeTable(dict[int, Any]):
    def __missing__(self, key: int) -> Any:
        raise pickle.UnpicklingError(f"pickle opcode {bytes([key])!r} is not used by legacy files")


# torch wrote legacy files with pickle protocol 2. Opcodes of later protocols are refused: some
# (BYTEARRAY8) allocate a length read from the file before reading it.
_PROTOCOL2_OPCODES = {op.code.encode("latin-1")[0] for op in pickletools.opcodes if op.proto <= 2}


# The pure-Python unpickler, not the C one: its memo is a dict, where the C unpickler's is an array
# that a crafted LONG_BINPUT index (up to 2**32) grows to gigabytes. The pickles here are small
# (the tensor data follows them), so its speed does not matter.
class _RestrictedUnpickler(pickle._Unpickler):
    dispatch = _OpcodeTable(
        {k: v for k, v in pickle._Unpickler.dispatch.items() if k in _PROTOCOL2_OPCODES}
    )

    def __init__(self, file: io.BytesIO, storages: dict[str, _Storage]) -> None:
        super().__init__(file)
        self._storages = storages

    def find_class(self, module: str, name: str) -> Any:
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor_v2
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise pickle.UnpicklingError(
            f"refusing to load global {module}.{name}: only state dicts of plain tensors "
            "(OrderedDict, _rebuild_tensor_v2, torch.*Storage) are allowed"
        )

    def persistent_load(self, pid: Any) -> Any:
        if not isinstance(pid, tuple) or not pid or pid[0] != "storage":
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r:.80}")
        try:
            _, stype, key, _location, numel, view_metadata = pid
        except ValueError as exc:
            raise pickle.UnpicklingError(f"malformed storage id {pid!r:.80}") from exc
        if not isinstance(stype, _StorageType):
            raise pickle.UnpicklingError(f"storage id names a non-storage type {stype!r:.80}")
        storage = self._storages.get(key)
        if storage is None:
            storage = self._storages[key] = _Storage(str(key), stype, int(numel))
        if view_metadata is not None:
            view_key, offset, view_numel = view_metadata
            del view_key  # views share the base storage's blob
            return _StorageView(storage, int(offset), int(view_numel))
        return storage


# What unpickling corrupt bytes can raise (pickle documents no closed list); all mean "bad file".
_UNPICKLING_ERRORS = (
    pickle.UnpicklingError,
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
    struct.error,
    OverflowError,
    RecursionError,
)


def _load_pickle(buf: io.BytesIO, storages: dict[str, _Storage], what: str) -> Any:
    try:
        return _RestrictedUnpickler(buf, storages).load()
    except EOFError as exc:
        raise LegacyCheckpointError(f"file ends inside the {what} (truncated?)") from exc
    except _UNPICKLING_ERRORS as exc:
        raise LegacyCheckpointError(f"cannot read the {what}: {exc}") from exc


def _materialize(ref: _TensorRef) -> npt.NDArray[Any]:
    storage = ref.storage
    if isinstance(storage, _StorageView):
        start, count, storage = storage.offset, storage.numel, storage.base
    else:
        start, count = 0, storage.numel
    data = storage.data
    if not isinstance(data, np.ndarray):
        raise LegacyCheckpointError(f"storage {storage.key} is not in the file's storage list")
    if min((*ref.size, *ref.stride, ref.offset, start, count)) < 0:
        raise LegacyCheckpointError(
            f"tensor in storage {storage.key} has a negative size or stride"
        )
    flat = data[start : start + count]
    if any(n == 0 for n in ref.size):
        return np.zeros(ref.size, dtype=flat.dtype)
    last = ref.offset + sum((n - 1) * s for n, s in zip(ref.size, ref.stride, strict=True))
    if last >= flat.size:
        raise LegacyCheckpointError(
            f"tensor of size {ref.size} reaches past its storage ({flat.size} elements)"
        )
    if not ref.size:
        arr = flat[ref.offset : ref.offset + 1].reshape(())
    else:
        item = flat.itemsize
        arr = np.lib.stride_tricks.as_strided(
            flat[ref.offset :],
            shape=ref.size,
            strides=tuple(s * item for s in ref.stride),
            writeable=False,
        )
    out = arr.copy(order="C")  # own the memory, so the file's buffer can be freed
    if storage.stype.name == "BFloat16Storage":
        out = (out.astype(np.uint32) << 16).view(np.float32)
    result: np.ndarray = out
    return result


def load_legacy_state_dict(path: str | Path) -> dict[str, npt.NDArray[Any]]:
    """Tensors of a legacy ``torch.save`` state dict, as contiguous numpy arrays by name."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise LegacyCheckpointError(f"cannot read {path}: {exc.strerror}") from exc
    if raw.startswith(_ZIP_MAGIC):
        raise LegacyCheckpointError(
            f"{path} is a zip-format PyTorch checkpoint (torch >= 1.6); only the legacy "
            "format is supported without torch"
        )
    buf = io.BytesIO(raw)
    storages: dict[str, _Storage] = {}
    # Even the header goes through the restricted unpickler: a crafted file must not run code.
    try:
        magic = _load_pickle(buf, storages, "header")
    except LegacyCheckpointError as exc:
        raise LegacyCheckpointError(f"{path} is not a legacy PyTorch checkpoint") from exc
    if magic != _MAGIC_NUMBER:
        raise LegacyCheckpointError(f"{path} is not a legacy PyTorch checkpoint (bad magic)")
    version = _load_pickle(buf, storages, "header")
    _load_pickle(buf, storages, "header")  # sys info: endianness and type sizes
    if version != _PROTOCOL_VERSION:
        raise LegacyCheckpointError(f"{path}: unsupported legacy protocol version {version!r}")

    obj = _load_pickle(buf, storages, "state dict")
    keys = _load_pickle(buf, storages, "storage key list")
    if not isinstance(obj, dict):
        raise LegacyCheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict")
    if not isinstance(keys, list):
        raise LegacyCheckpointError(f"{path}: storage key list is a {type(keys).__name__}")

    pos = buf.tell()
    for key in keys:
        storage = storages.get(key)
        if storage is None:
            raise LegacyCheckpointError(f"{path}: storage {key!r} is listed but never used")
        if pos + 8 > len(raw):
            raise LegacyCheckpointError(f"{path} ends before storage {key!r} (truncated?)")
        (numel,) = struct.unpack_from("<q", raw, pos)
        pos += 8
        nbytes = numel * storage.stype.dtype.itemsize
        if numel != storage.numel or numel < 0 or pos + nbytes > len(raw):
            raise LegacyCheckpointError(
                f"{path}: storage {key!r} data is short or mismatched "
                f"({numel} elements declared, {storage.numel} expected; truncated?)"
            )
        storage.data = np.frombuffer(raw, dtype=storage.stype.dtype, count=numel, offset=pos)
        pos += nbytes

    out: dict[str, npt.NDArray[Any]] = {}
    for name, value in obj.items():
        # Non-tensor entries (none in plain state dicts) are skipped on purpose.
        if isinstance(value, _TensorRef):
            try:
                out[str(name)] = _materialize(value)
            except (ValueError, TypeError) as exc:
                raise LegacyCheckpointError(f"{path}: tensor {name!r} is malformed: {exc}") from exc
    return out
