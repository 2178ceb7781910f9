"""Frame sources: OpenCV captures (camera, file, stream), image folders, the built-in scene."""

from __future__ import annotations

import abc
import time
from functools import cache
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

Image = npt.NDArray[np.uint8]
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
# The scene's photos (``scene/``), with the ImageNet class a classifier should see in them.
SCENE_PHOTOS: dict[str, int] = {"chelsea": 285, "coffee": 967}


class SourceError(RuntimeError):
    """A source that cannot be opened or has stopped producing frames."""


class FrameSource(abc.ABC):
    """Produces BGR uint8 frames of a fixed size."""

    kind: str = "source"

    @abc.abstractmethod
    def read(self) -> Image | None:
        """The next frame, or None when a finite source is exhausted."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the device or file."""

    def describe(self) -> str:
        return self.kind


def fit(image: Image, width: int, height: int) -> Image:
    if image.shape[1] == width and image.shape[0] == height:
        return image
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)  # type: ignore[return-value]


SCENE_DIR = Path(__file__).resolve().parent / "scene"


@cache
def scene_photo(name: str) -> Image:
    """One of the scene's photos (``scene/README.md``), BGR like every OpenCV frame."""
    path = SCENE_DIR / f"{name}.png"
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise SourceError(f"scene photo {name!r} missing or unreadable at {path}")
    return np.ascontiguousarray(image)


class SceneSource(FrameSource):
    """A moving test scene over the photos shipped in ``scene/``, so no camera is needed.

    A slow pan and zoom over each photo (``chelsea`` the cat, then ``coffee``), switching every
    ``hold_s`` seconds, with a moving marker and a frame counter so motion is visible in a viewer.
    ``photos`` restricts the cycle, e.g. ``scene:chelsea``.
    """

    kind = "scene"

    def __init__(
        self,
        width: int,
        height: int,
        photos: tuple[str, ...] = ("chelsea", "coffee"),
        hold_s: float = 5.0,
    ) -> None:
        unknown = [p for p in photos if p not in SCENE_PHOTOS]
        if unknown:
            raise SourceError(
                f"unknown scene photo(s) {unknown}; choose from {sorted(SCENE_PHOTOS)}"
            )
        self.width, self.height = width, height
        self.photos = photos
        self.hold_s = hold_s
        self._start = time.monotonic()
        self._n = 0

    def current_photo(self, t: float | None = None) -> str:
        t = time.monotonic() - self._start if t is None else t
        return self.photos[int(t // self.hold_s) % len(self.photos)]

    def read(self) -> Image:
        t = time.monotonic() - self._start
        photo = scene_photo(self.current_photo(t))
        h, w = photo.shape[:2]
        # Zoom between 100 % and 85 % of the photo, panning across it.
        phase = (t % self.hold_s) / self.hold_s
        zoom = 1.0 - 0.15 * (0.5 - 0.5 * np.cos(2 * np.pi * phase))
        cw, ch = int(w * zoom), int(h * zoom)
        x0 = int((w - cw) * phase)
        y0 = int((h - ch) * 0.5)
        frame: Image = fit(photo[y0 : y0 + ch, x0 : x0 + cw], self.width, self.height).copy()
        # Moving marker along the bottom edge, and a frame counter.
        mx = int((self.width - 20) * (0.5 + 0.5 * np.sin(t * 2.0)))
        cv2.rectangle(frame, (mx, self.height - 16), (mx + 16, self.height - 4), (0, 255, 255), -1)
        cv2.putText(
            frame,
            f"#{self._n}",
            (8, 22),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.6,
            (255, 255, 255),
            1,
            cv2.LINE_AA,
        )
        self._n += 1
        return frame

    def describe(self) -> str:
        return f"scene:{','.join(self.photos)}"


class FolderSource(FrameSource):
    """Images of a folder in name order, looping if asked."""

    kind = "folder"

    def __init__(self, folder: Path, width: int, height: int, loop: bool = True) -> None:
        self.files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.files:
            raise SourceError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder}")
        self.width, self.height, self.loop = width, height, loop
        self._i = 0
        self.unreadable = 0

    def read(self) -> Image | None:
        for _ in range(len(self.files)):
            if self._i >= len(self.files):
                if not self.loop:
                    return None
                self._i = 0
            path = self.files[self._i]
            self._i += 1
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is not None:
                return fit(np.asarray(image, dtype=np.uint8), self.width, self.height)
            self.unreadable += 1
        raise SourceError(f"no image in {self.files[0].parent} could be read")

    def describe(self) -> str:
        return f"folder:{self.files[0].parent}"


class CaptureSource(FrameSource):
    """cv2.VideoCapture: a camera index, a video file or an RTSP / HTTP URL."""

    def __init__(self, spec: str, width: int, height: int, loop: bool = True) -> None:
        self.spec, self.width, self.height, self.loop = spec, width, height, loop
        self.kind = "camera" if spec.isdigit() else ("url" if "://" in spec else "file")
        self._cap = self._open()

    def _open(self) -> cv2.VideoCapture:
        cap = (
            cv2.VideoCapture(int(self.spec))
            if self.kind == "camera"
            else cv2.VideoCapture(self.spec)
        )
        if not cap.isOpened():
            raise SourceError(f"OpenCV cannot open {self.kind} source {self.spec!r}")
        if self.kind == "camera":
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # fresh frames, not a backlog
        return cap

    def read(self) -> Image | None:
        ok, frame = self._cap.read()
        if not ok and self.kind == "file" and self.loop:
            self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, frame = self._cap.read()
        if not ok:
            if self.kind == "file":
                return None
            raise SourceError(f"{self.kind} source {self.spec!r} stopped producing frames")
        return fit(np.asarray(frame, dtype=np.uint8), self.width, self.height)

    def close(self) -> None:
        self._cap.release()

    def describe(self) -> str:
        return f"{self.kind}:{self.spec}"


def open_source(spec: str, width: int, height: int, loop: bool = True) -> FrameSource:
    """Open ``scene``, ``scene:chelsea``, a camera index, a folder, a file or a URL."""
    if spec == "scene":
        return SceneSource(width, height)
    if spec.startswith("scene:"):
        return SceneSource(width, height, tuple(p for p in spec[6:].split(",") if p))
    if spec.isdigit() or "://" in spec:
        return CaptureSource(spec, width, height, loop)
    path = Path(spec).expanduser()
    if path.is_dir():
        return FolderSource(path, width, height, loop)
    if path.is_file():
        return CaptureSource(str(path), width, height, loop)
    raise SourceError(
        f"source {spec!r} is not 'scene', a camera index, an existing file or folder, or a URL"
    )
