"""Images at the edge: arrays, encoded bytes, files or video frames in; validated RGB out (typed errors)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from agent.errors import InvalidImageError

MIN_SIDE, MAX_SIDE = 16, 8192


def to_rgb(image) -> np.ndarray:
    """uint8 [H, W, 3] from a numpy/torch array (HxWx3), PNG/JPEG bytes, a file path, or an av.VideoFrame."""
    if hasattr(image, "to_ndarray") and hasattr(image, "width"):  # av.VideoFrame (aiortc camera)
        return image.to_ndarray(format="rgb24")
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise InvalidImageError(f"image file not found: {path}")
        image = path.read_bytes()
    if isinstance(image, (bytes, bytearray, memoryview)):
        return _decode(bytes(image))
    if hasattr(image, "detach"):
        image = image.detach().cpu().numpy()
    if not isinstance(image, np.ndarray):
        raise InvalidImageError(f"unsupported image type {type(image).__name__}: send an HxWx3 array, "
                                "PNG/JPEG bytes or a file path")
    if image.ndim == 2:
        raise InvalidImageError(f"grayscale image {image.shape}: send an RGB image shaped HxWx3")
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise InvalidImageError(f"expected an RGB image shaped HxWx3, got shape {image.shape}")
    h, w = image.shape[:2]
    if min(h, w) < MIN_SIDE or max(h, w) > MAX_SIDE:
        raise InvalidImageError(f"image size {w}x{h} is outside {MIN_SIDE}..{MAX_SIDE} pixels per side")
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
    if not data:
        raise InvalidImageError("empty image bytes")
    import av

    try:
        with av.open(io.BytesIO(data)) as container:
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
