"""A live camera for the terminal client: a webcam through PyAV, a video file looped as if it were one, or a
still image; plus a half-block preview of the latest frame.

Frames are decoded on a background thread that keeps only the newest one; the app offers it to the session
(`send_image`), whose own sampling (`vision_fps`, near-duplicate skipping) decides what the model sees.
"""

from __future__ import annotations

import platform
import threading
import time
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif"}


class CameraError(RuntimeError):
    pass


def _device_input(spec: str) -> tuple[str, str | None]:
    """(url, format) for a camera device: /dev/videoN or N on Linux, N or a name on macOS/Windows."""
    system = platform.system()
    if system == "Linux":
        return (f"/dev/video{spec}" if spec.isdigit() else spec), "v4l2"
    if system == "Darwin":
        return spec, "avfoundation"
    if system == "Windows":
        return (spec if spec.startswith("video=") else f"video={spec}"), "dshow"
    raise CameraError(f"no camera support for {system}: pass a video file instead")


class CameraSource:
    """`start()`, then `latest()` -> (frame index, uint8 HxWx3) or None; `stop()`. Files loop at their own rate."""

    def __init__(self, spec: str, fps: float = 15.0):
        self.spec, self.fps = spec, fps
        path = Path(spec)
        self.still: np.ndarray | None = None
        self.kind = "device"
        if path.suffix.lower() in IMAGE_SUFFIXES:
            from agent.errors import InvalidImageError
            from agent.images import to_rgb

            if not path.is_file():
                raise CameraError(f"camera image not found: {path}")
            try:
                self.still = to_rgb(path)
            except InvalidImageError as exc:
                raise CameraError(f"cannot read the camera image {path}: {exc}") from exc
            self.kind = "image"
        elif path.is_file():
            self.kind = "file"
        elif path.suffix and not spec.startswith("/dev/"):
            raise CameraError(f"video file not found: {spec}")
        self._frame: np.ndarray | None = self.still
        self.frames = 1 if self.still is not None else 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: str | None = None
        if self.kind != "image":
            self._open().close()  # fail now, with a clear message, rather than inside the UI

    def _open(self):
        import av

        try:
            if self.kind == "file":
                container = av.open(self.spec)
            else:
                url, fmt = _device_input(self.spec)
                container = av.open(url, format=fmt, options={"framerate": str(int(self.fps))})
        except (av.error.FFmpegError, OSError) as exc:
            what = "video file" if self.kind == "file" else "camera device"
            raise CameraError(f"cannot open the {what} {self.spec}: {exc}") from exc
        if not container.streams.video:
            container.close()
            raise CameraError(f"{self.spec} has no video stream")
        return container

    def start(self) -> None:
        if self.kind != "image" and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="duplex-camera", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        import av

        while not self._stop.is_set():
            try:
                with self._open() as container:
                    stream = container.streams.video[0]
                    rate = float(stream.average_rate or self.fps)
                    t0 = time.monotonic()
                    for n, frame in enumerate(container.decode(stream)):
                        if self._stop.is_set():
                            return
                        rgb = frame.to_ndarray(format="rgb24")
                        with self._lock:
                            self._frame = rgb
                            self.frames += 1
                        if self.kind == "file":  # play a file at its own pace, as a camera would deliver it
                            wait = t0 + (n + 1) / rate - time.monotonic()
                            if wait > 0:
                                time.sleep(wait)
            except (CameraError, av.error.FFmpegError) as exc:
                self.error = str(exc)
                return
            if self.kind != "file":  # a device that ended: stop; a file: loop
                return

    def latest(self) -> tuple[int, np.ndarray] | None:
        with self._lock:
            return (self.frames, self._frame) if self._frame is not None else None

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)


def half_blocks(rgb: np.ndarray, width: int = 32, height: int = 12) -> str:
    """A `width` x `height` cell preview with "▀" (upper half block): two pixels per cell, as rich markup."""
    h, w = rgb.shape[:2]
    ys = (np.arange(2 * height) * h / (2 * height)).astype(int)
    xs = (np.arange(width) * w / width).astype(int)
    small = rgb[ys][:, xs]
    lines = []
    for r in range(height):
        top, bottom = small[2 * r], small[2 * r + 1]
        lines.append("".join(f"[rgb({t[0]},{t[1]},{t[2]}) on rgb({b[0]},{b[1]},{b[2]})]▀[/]"
                             for t, b in zip(top, bottom)))
    return "\n".join(lines)
