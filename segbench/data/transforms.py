"""Training augmentation, as in mmsegmentation's standard pipeline (used by all three
papers): random keep-ratio resize with ratio 0.5-2.0, random crop whose largest class
covers at most ``cat_max_ratio`` of it, horizontal flip, photometric distortion, and
padding to the crop size (image 0, label = ignore).
"""
from __future__ import annotations

import cv2
import numpy as np

from segbench.data.datasets import IGNORE_INDEX
from segbench.engine.inference import rescale_size


def random_resize(image: np.ndarray, label: np.ndarray, rng: np.random.Generator,
                  scale: tuple[int, int] | None, ratio_range=(0.5, 2.0)) -> tuple[np.ndarray, np.ndarray]:
    ratio = rng.uniform(*ratio_range)
    height, width = label.shape
    if scale is None:  # no dataset scale: the ratio applies to the image's own size
        size = (max(int(height * ratio + 0.5), 1), max(int(width * ratio + 0.5), 1))
    else:
        size = rescale_size(height, width, (int(scale[0] * ratio), int(scale[1] * ratio)))
    image = cv2.resize(image, size[::-1], interpolation=cv2.INTER_LINEAR)
    label = cv2.resize(label, size[::-1], interpolation=cv2.INTER_NEAREST)
    return image, label


def random_crop(image: np.ndarray, label: np.ndarray, crop: int, rng: np.random.Generator,
                cat_max_ratio: float = 0.75, tries: int = 10) -> tuple[np.ndarray, np.ndarray]:
    height, width = label.shape
    box = None
    for _ in range(tries):
        y = int(rng.integers(0, max(height - crop, 0) + 1))
        x = int(rng.integers(0, max(width - crop, 0) + 1))
        box = (y, x)
        classes, counts = np.unique(label[y:y + crop, x:x + crop], return_counts=True)
        counts = counts[classes != IGNORE_INDEX]
        if len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio:
            break
    y, x = box
    return image[y:y + crop, x:x + crop], label[y:y + crop, x:x + crop]


def photometric_distortion(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Brightness, contrast, saturation and hue jitter, each with probability 1/2."""
    img = image.astype(np.float32)
    if rng.random() < 0.5:
        img += rng.uniform(-32, 32)
    contrast_first = rng.random() < 0.5
    contrast = rng.uniform(0.5, 1.5) if rng.random() < 0.5 else None
    if contrast_first and contrast is not None:
        img *= contrast
    img = np.clip(img, 0, 255)
    saturation = rng.uniform(0.5, 1.5) if rng.random() < 0.5 else None
    hue = rng.integers(-18, 19) if rng.random() < 0.5 else None
    if saturation is not None or hue is not None:
        hsv = cv2.cvtColor(img.astype(np.uint8), cv2.COLOR_RGB2HSV).astype(np.float32)
        if saturation is not None:
            hsv[..., 1] = np.clip(hsv[..., 1] * saturation, 0, 255)
        if hue is not None:
            hsv[..., 0] = (hsv[..., 0] + hue) % 180
        img = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB).astype(np.float32)
    if not contrast_first and contrast is not None:
        img = np.clip(img * contrast, 0, 255)
    return img.astype(np.uint8)


def pad_to(image: np.ndarray, label: np.ndarray, crop: int) -> tuple[np.ndarray, np.ndarray]:
    pad_h, pad_w = max(crop - label.shape[0], 0), max(crop - label.shape[1], 0)
    if pad_h or pad_w:
        image = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)))
        label = np.pad(label, ((0, pad_h), (0, pad_w)), constant_values=IGNORE_INDEX)
    return image, label


def train_augment(image: np.ndarray, label: np.ndarray, crop: int, rng: np.random.Generator,
                  scale: tuple[int, int] | None, ratio_range=(0.5, 2.0),
                  photometric: bool = True) -> tuple[np.ndarray, np.ndarray]:
    image, label = random_resize(image, label, rng, scale, ratio_range)
    image, label = random_crop(image, label, crop, rng)
    if rng.random() < 0.5:
        image, label = image[:, ::-1], label[:, ::-1]
    image = np.ascontiguousarray(image)
    if photometric:
        image = photometric_distortion(image, rng)
    return pad_to(image, np.ascontiguousarray(label), crop)
