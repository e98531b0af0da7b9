"""Images at the edge: arrays, encoded bytes, files or video frames in; validated RGB out (typed errors).

`check` is the cheap part (types, shapes, and the pixel count read from an encoded image's header, so a
decompression bomb is refused before a byte of it is decoded); `to_rgb` + `prepare` are the costly part, which
sessions run off the event loop.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from agent.errors import InvalidImageError

MIN_SIDE, MAX_SIDE = 16, 8192
MAX_PIXELS = 16_000_000  # 16 MP: more than any camera frame worth showing a 224-pixel encoder


def _check_dims(w: int, h: int) -> None:
    if min(h, w) < MIN_SIDE or max(h, w) > MAX_SIDE:
        raise InvalidImageError(f"image size {w}x{h} is outside {MIN_SIDE}..{MAX_SIDE} pixels per side")
    if w * h > MAX_PIXELS:
        raise InvalidImageError(f"image of {w}x{h} pixels exceeds the {MAX_PIXELS // 1_000_000} MP limit: "
                                "scale it down before sending")


def encoded_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG or JPEG header without decoding; None for other formats.

    Raises InvalidImageError for a file that claims to be PNG/JPEG but whose header is broken.
    """
    if data[:4] == b"\x89PNG":
        if len(data) < 24 or data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
            raise InvalidImageError("cannot decode image bytes (corrupt or not PNG/JPEG): broken PNG header")
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if data[:2] == b"\xff\xd8":
        i = 2
        while i + 9 <= len(data):
            if data[i] != 0xFF:
                break
            marker = data[i + 1]
            if marker == 0xFF:  # fill byte
                i += 1
                continue
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
                i += 2
                continue
            length = int.from_bytes(data[i + 2:i + 4], "big")
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # start of frame
                return int.from_bytes(data[i + 7:i + 9], "big"), int.from_bytes(data[i + 5:i + 7], "big")
            i += 2 + length
        raise InvalidImageError("cannot decode image bytes (corrupt or not PNG/JPEG): no JPEG frame header")
    return None


def _encoded(image) -> bytes | None:
    """The bytes of an encoded image given as a file path or bytes; None for anything else."""
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise InvalidImageError(f"image file not found: {path}")
        return path.read_bytes()
    if isinstance(image, (bytes, bytearray, memoryview)):
        return bytes(image)
    return None


def _check_encoded(data: bytes) -> None:
    if not data:
        raise InvalidImageError("empty image bytes")
    size = encoded_size(data)
    if size is not None:
        _check_dims(*size)


def check(image):
    """Validate cheaply what `to_rgb` will decode; returns the image in a form `to_rgb` takes (a file's bytes).

    Raises InvalidImageError with what to do about it."""
    if hasattr(image, "to_ndarray") and hasattr(image, "width"):  # av.VideoFrame
        _check_dims(image.width, image.height)
        return image
    data = _encoded(image)
    if data is not None:
        _check_encoded(data)
        return data
    return to_rgb(image)  # arrays: the checks are the conversion


def to_rgb(image) -> np.ndarray:
    """uint8 [H, W, 3] from a numpy/torch array (HxWx3), PNG/JPEG bytes, a file path, or an av.VideoFrame."""
    if hasattr(image, "to_ndarray") and hasattr(image, "width"):  # av.VideoFrame (aiortc camera)
        _check_dims(image.width, image.height)
        return image.to_ndarray(format="rgb24")
    data = _encoded(image)
    if data is not None:
        return _decode(data)
    if hasattr(image, "detach"):
        image = image.detach().cpu().numpy()
    if not isinstance(image, np.ndarray):
        raise InvalidImageError(f"unsupported image type {type(image).__name__}: send an HxWx3 array, "
                                "PNG/JPEG bytes or a file path")
    if image.ndim == 2:
        raise InvalidImageError(f"grayscale image {image.shape}: send an RGB image shaped HxWx3")
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise InvalidImageError(f"expected an RGB image shaped HxWx3, got shape {image.shape}")
    _check_dims(image.shape[1], image.shape[0])
    if image.dtype == np.uint8:
        rgb = image[..., :3]
    elif image.dtype.kind == "f":
        if not np.isfinite(image).all():
            raise InvalidImageError("image contains NaN or infinite values")
        rgb = (np.clip(image[..., :3], 0, 1) * 255).astype(np.uint8)
    else:
        raise InvalidImageError(f"unsupported image dtype {image.dtype}: use uint8 (0-255) or float (0-1)")
    return np.ascontiguousarray(rgb)


def _decode(data: bytes) -> np.ndarray:
    _check_encoded(data)
    import av

    try:
        with av.open(io.BytesIO(data)) as container:
            ctx = container.streams.video[0].codec_context
            if ctx.width and ctx.height:  # other formats: refuse a bomb as soon as the header is parsed
                _check_dims(ctx.width, ctx.height)
            frame = next(container.decode(video=0))
            return to_rgb(frame.to_ndarray(format="rgb24"))
    except InvalidImageError:
        raise
    except Exception as exc:  # noqa: BLE001 - PyAV raises many error types on corrupt data
        raise InvalidImageError(f"cannot decode image bytes (corrupt or not PNG/JPEG): {exc}") from exc


def prepare(rgb: np.ndarray, size: int) -> torch.Tensor:
    """uint8 [H, W, 3] -> float [3, size, size] in [0, 1] (centre crop to square, antialiased resize)."""
    h, w = rgb.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    x = torch.from_numpy(rgb[top:top + s, left:left + s]).permute(2, 0, 1).float()[None] / 255
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]


def change(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean absolute difference of two prepared images on a coarse grid (0 = same view)."""
    pa, pb = F.adaptive_avg_pool2d(a[None], 16), F.adaptive_avg_pool2d(b[None], 16)
    return float((pa - pb).abs().mean())
