"""Rendered scenes for the vision questions: N shapes of one colour on a light background (numpy only)."""

from __future__ import annotations

import random

import numpy as np

RGB = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (230, 200, 30)}


def render(shape: str, colour: str, count: int, size: int = 64, seed: int = 0) -> np.ndarray:
    """uint8 [size, size, 3]; shapes placed without overlap in a seeded layout."""
    rng = random.Random(seed)
    img = np.full((size, size, 3), 235, np.uint8)
    noise = np.random.default_rng(seed).integers(-8, 9, img.shape)
    img = np.clip(img.astype(np.int16) + noise, 0, 255).astype(np.uint8)
    yy, xx = np.mgrid[:size, :size]
    cells = [(r, c) for r in range(2) for c in range(2)]
    rng.shuffle(cells)
    half = size // 2
    for r, c in cells[:count]:
        rad = rng.randint(size // 10, size // 6)
        cy = r * half + rng.randint(rad + 1, half - rad - 1)
        cx = c * half + rng.randint(rad + 1, half - rad - 1)
        if shape == "circle":
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= rad**2
        elif shape == "square":
            mask = (np.abs(yy - cy) <= rad) & (np.abs(xx - cx) <= rad)
        else:  # triangle pointing up
            mask = (yy >= cy - rad) & (yy <= cy + rad) & (np.abs(xx - cx) <= (yy - (cy - rad)) / 2)
        img[mask] = RGB[colour]
    return img
