"""The built-in synthetic scene dataset: deterministic, small, and learnable on a CPU.

A scene is a horizon splitting "sky" from "ground" (two stuff classes), with "thing"
objects on top. What decides an object's class is its shape and where it is, never its
colour: every region gets a random colour and a random texture (flat, gradient, stripes,
checker or noise), so a model has to look at shape and context:

- a disk floating in the sky is a *balloon*; the same disk resting on the ground is a *ball*;
- a triangle in the sky is a *kite*; on the ground it is a *tent*;
- an annulus is a *ring* and an axis-aligned square a *crate*, wherever they are;
- a thin vertical bar standing on the ground is a *pole*.

Object sizes are drawn log-uniformly so that instances fall into all three buckets of
the object-size protocol (scaled to the scene size: see ``SYNTHETIC_SIZE_BUCKETS`` in
``segbench.data.datasets``), and patch-32 models visibly lose the small ones. Every
object gets a colour far from its background's, so shapes are visible. Small clutter
blobs are labelled "other" (ADE20K's label 0), which evaluation ignores.

Image ``i`` of a split depends only on ``(seed, split, i)``, so any subset can be
regenerated anywhere. Labels follow ADE20K's convention on disk (0 = other, 1..K =
classes) and the reduced convention in memory (0..K-1, 255 = ignore).
"""
from __future__ import annotations

import numpy as np

CLASSES = ("sky", "ground", "balloon", "ball", "kite", "tent", "ring", "crate", "pole")
SKY, GROUND, BALLOON, BALL, KITE, TENT, RING, CRATE, POLE = range(len(CLASSES))
IGNORE = 255
SPLIT_SEEDS = {"train": 0, "val": 1, "test": 2}


def _texture(rng: np.random.Generator, height: int, width: int, base: np.ndarray) -> np.ndarray:
    """Colour ``base`` with a random mild texture, float RGB in [0, 255], shape (H, W, 3)."""
    other = np.clip(base + rng.normal(0, 30, 3), 0, 255)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    kind = rng.integers(5)
    if kind == 0:  # flat
        mix = np.zeros((height, width), np.float32)
    elif kind == 1:  # linear gradient in a random direction
        angle = rng.uniform(0, np.pi)
        ramp = np.cos(angle) * xx + np.sin(angle) * yy
        mix = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1.0)
    elif kind == 2:  # stripes
        angle, period = rng.uniform(0, np.pi), rng.uniform(4, 16)
        mix = (np.sin((np.cos(angle) * xx + np.sin(angle) * yy) * 2 * np.pi / period) > 0).astype(np.float32)
    elif kind == 3:  # checker
        cell = int(rng.integers(3, 10))
        mix = ((yy // cell + xx // cell) % 2).astype(np.float32)
    else:  # blotchy noise
        mix = rng.uniform(0, 1, (height // 4 + 1, width // 4 + 1)).astype(np.float32)
        mix = np.kron(mix, np.ones((4, 4), np.float32))[:height, :width]
    return base * (1 - mix[..., None]) + other * mix[..., None]


def _contrasting_colour(rng: np.random.Generator, against: np.ndarray, min_distance: float = 90.0) -> np.ndarray:
    """A random colour at least ``min_distance`` (RGB, 0-255) from ``against``."""
    for _ in range(20):
        colour = rng.uniform(0, 255, 3)
        if np.linalg.norm(colour - against) >= min_distance:
            return colour
    return 255 - against  # the complement is always far enough


def _shape_mask(kind: int, cy: float, cx: float, r: float, yy: np.ndarray, xx: np.ndarray,
                rng: np.random.Generator) -> np.ndarray:
    dy, dx = yy - cy, xx - cx
    if kind in (BALLOON, BALL):
        return dy ** 2 + dx ** 2 <= r ** 2
    if kind == RING:
        d2 = dy ** 2 + dx ** 2
        return (d2 <= r ** 2) & (d2 >= (r * rng.uniform(0.45, 0.7)) ** 2)
    if kind == CRATE:
        return (np.abs(dy) <= r * 0.85) & (np.abs(dx) <= r * 0.85)
    if kind in (KITE, TENT):  # upward triangle with its base at cy + r / 2
        top, base = cy - r, cy + r / 2
        half_width = (yy - top) / (base - top) * r
        return (yy >= top) & (yy <= base) & (np.abs(dx) <= half_width)
    if kind == POLE:  # thin bar standing on (cy, cx), r is its height
        half = max(1.5, r / 10)
        return (yy <= cy) & (yy >= cy - r) & (np.abs(dx) <= half)
    raise ValueError(kind)


def make_scene(rng: np.random.Generator, size: int = 128) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One scene: (image uint8 HxWx3, label uint8 HxW in ADE convention, instances int32 HxW)."""
    h = w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    horizon_y = rng.uniform(0.3, 0.7) * h
    wave = rng.uniform(0, 0.06 * h) * np.sin(xx[0] * 2 * np.pi / rng.uniform(0.5 * w, 2 * w) + rng.uniform(0, 6.3))
    horizon = horizon_y + wave  # per-column horizon height
    is_sky = yy < horizon[None, :]

    sky_colour = rng.uniform(0, 255, 3)
    ground_colour = _contrasting_colour(rng, sky_colour, 60.0)
    image = np.where(is_sky[..., None], _texture(rng, h, w, sky_colour), _texture(rng, h, w, ground_colour))
    label = np.where(is_sky, SKY, GROUND).astype(np.int32)
    instances = np.where(is_sky, 1, 2).astype(np.int32)  # stuff regions are instances too

    next_id = 3
    for _ in range(int(rng.integers(4, 10))):
        kind = int(rng.choice([BALLOON, BALL, KITE, TENT, RING, CRATE, POLE]))
        r = float(np.exp(rng.uniform(np.log(3.5), np.log(0.42 * size))))
        cx = rng.uniform(0, w)
        ground_y = float(horizon[int(min(cx, w - 1))])
        if kind in (BALLOON, KITE):  # must float: fully above the horizon
            r = min(r, ground_y / 2.2)
            cy = rng.uniform(r, max(r + 1e-3, ground_y - 1.1 * r))
        elif kind in (BALL, TENT):  # must rest on the ground: below the horizon
            r = min(r, (h - ground_y) / 2.2)
            cy = rng.uniform(ground_y + 1.1 * r, max(ground_y + 1.1 * r + 1e-3, h - r / 2))
        elif kind == POLE:  # stands on the ground, may reach into the sky
            r = max(r, 8.0)
            cy = rng.uniform(ground_y + 2, h)
        else:
            cy = rng.uniform(0, h)
        if r < 2.0:
            continue
        mask = _shape_mask(kind, cy, cx, r, yy, xx, rng)
        if mask.sum() < 4:
            continue
        background = sky_colour if kind in (BALLOON, KITE) else ground_colour
        image[mask] = _texture(rng, h, w, _contrasting_colour(rng, background))[mask]
        label[mask] = kind
        instances[mask] = next_id
        next_id += 1

    for _ in range(int(rng.integers(0, 3))):  # "other" clutter: labelled, then ignored
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(1.5, 4)
        blob = (yy - cy) ** 2 / rng.uniform(0.5, 2) + (xx - cx) ** 2 <= r ** 2
        image[blob] = rng.uniform(0, 255, 3)
        label[blob] = -1
        instances[blob] = 0

    image = np.clip(image + rng.normal(0, 4, image.shape), 0, 255).astype(np.uint8)
    ade_label = (label + 1).astype(np.uint8)  # ADE convention on disk: 0 = other
    return image, ade_label, instances


def scene(index: int, split: str = "train", seed: int = 0, size: int = 128):
    """Image ``index`` of ``split``, reproducible from (seed, split, index) alone."""
    rng = np.random.default_rng([seed, SPLIT_SEEDS[split], index])
    return make_scene(rng, size)
