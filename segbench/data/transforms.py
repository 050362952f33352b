"""Training augmentation: mmsegmentation's standard pipeline, which all three papers train
with (Segmenter Sec. 4.2, SETR Sec. 4.1, SegFormer Sec. 4.1):

1. random keep-ratio resize: a ratio in [0.5, 2.0] times the dataset's training scale
   (ADE20K (2048, 512), Cityscapes (2048, 1024), ...; the image's own size when the dataset
   has none), bilinear for the image, nearest for the label;
2. random crop, redrawn up to 10 times while one class covers ``cat_max_ratio`` (0.75) or
   more of it (ignored pixels not counted);
3. horizontal flip with probability 1/2;
4. photometric distortion: brightness, contrast (before or after the colour changes),
   saturation and hue jitter, each with probability 1/2, on uint8 images;
5. normalisation with the model's mean / std, then padding to the crop size with 0 (the
   image, after normalisation) and the ignore label.

The random draws use the same ``numpy.random`` calls in the same order as mmseg 1.2.2
(``RandomResize``, ``RandomCrop``, ``RandomFlip``, ``PhotoMetricDistortion``), so with a
``np.random.RandomState`` seeded like mmseg's global generator the output is identical
(tests/test_train_augment.py checks this against the installed mmsegmentation).
"""
from __future__ import annotations

import cv2
import numpy as np

from segbench.data.datasets import IGNORE_INDEX
from segbench.engine.inference import rescale_size


def random_resize(image: np.ndarray, label: np.ndarray, rng: np.random.RandomState,
                  scale: tuple[int, int] | None, ratio_range=(0.5, 2.0)) -> tuple[np.ndarray, np.ndarray]:
    """Keep-ratio resize to ``ratio * scale`` (mmcv ``RandomResize(scale, ratio_range, keep_ratio=True)``)."""
    low, high = ratio_range
    ratio = rng.random_sample() * (high - low) + low
    height, width = label.shape
    base = (width, height) if scale is None else scale
    size = rescale_size(height, width, (int(base[0] * ratio), int(base[1] * ratio)))
    image = cv2.resize(image, size[::-1], interpolation=cv2.INTER_LINEAR)
    label = cv2.resize(label, size[::-1], interpolation=cv2.INTER_NEAREST)
    return image, label


def random_crop(image: np.ndarray, label: np.ndarray, crop: tuple[int, int], rng: np.random.RandomState,
                cat_max_ratio: float = 0.75) -> tuple[np.ndarray, np.ndarray]:
    """A random (height, width) crop (smaller if the image is); mmseg's ``RandomCrop``."""
    height, width = label.shape

    def draw() -> tuple[int, int]:
        return rng.randint(0, max(height - crop[0], 0) + 1), rng.randint(0, max(width - crop[1], 0) + 1)

    y, x = draw()
    if cat_max_ratio < 1.0:
        for _ in range(10):
            classes, counts = np.unique(label[y:y + crop[0], x:x + crop[1]], return_counts=True)
            counts = counts[classes != IGNORE_INDEX]
            if len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio:
                break
            y, x = draw()  # after 10 failed tries the 11th draw is kept unchecked, as mmseg
    return image[y:y + crop[0], x:x + crop[1]], label[y:y + crop[0], x:x + crop[1]]


def _scale_shift(img: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    return np.clip(img.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)


def photometric_distortion(image: np.ndarray, rng: np.random.RandomState) -> np.ndarray:
    """mmseg's ``PhotoMetricDistortion`` on a uint8 RGB image (brightness +-32, contrast and
    saturation x[0.5, 1.5], hue +-18 of OpenCV's 180), each step with probability 1/2."""

    def contrast(img: np.ndarray) -> np.ndarray:
        return _scale_shift(img, alpha=rng.uniform(0.5, 1.5)) if rng.randint(2) else img

    img = _scale_shift(image, beta=rng.uniform(-32, 32)) if rng.randint(2) else image
    contrast_first = rng.randint(2) == 1
    if contrast_first:
        img = contrast(img)
    if rng.randint(2):  # saturation
        hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
        hsv[..., 1] = _scale_shift(hsv[..., 1], alpha=rng.uniform(0.5, 1.5))
        img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    if rng.randint(2):  # hue (OpenCV's uint8 hue runs over 0..179)
        hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
        hsv[..., 0] = (hsv[..., 0].astype(int) + rng.randint(-18, 18)) % 180
        img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    if not contrast_first:
        img = contrast(img)
    return img


def normalize_and_pad(image: np.ndarray, label: np.ndarray, crop: tuple[int, int], mean, std
                      ) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) uint8 -> normalised (3, crop_h, crop_w) float32, padded bottom / right with 0
    after normalisation (mmseg's data preprocessor), the label with the ignore index."""
    x = (image.astype(np.float32) - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    pad_h, pad_w = crop[0] - label.shape[0], crop[1] - label.shape[1]
    x = np.pad(x, ((0, pad_h), (0, pad_w), (0, 0)))
    label = np.pad(label, ((0, pad_h), (0, pad_w)), constant_values=IGNORE_INDEX)
    return np.ascontiguousarray(x.transpose(2, 0, 1)), label


def train_augment(image: np.ndarray, label: np.ndarray, crop: tuple[int, int], rng: np.random.RandomState,
                  scale: tuple[int, int] | None, mean, std, ratio_range=(0.5, 2.0), cat_max_ratio: float = 0.75,
                  photometric: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """One training sample: normalised (3, crop_h, crop_w) float32 image and (crop_h, crop_w) labels."""
    image, label = random_resize(image, label, rng, scale, ratio_range)
    image, label = random_crop(image, label, crop, rng, cat_max_ratio)
    if rng.random_sample() < 0.5:  # mmcv RandomFlip(prob=0.5): one uniform draw, as np.random.choice makes
        image, label = image[:, ::-1], label[:, ::-1]
    image = np.ascontiguousarray(image)
    if photometric:
        image = photometric_distortion(image, rng)
    return normalize_and_pad(image, np.ascontiguousarray(label), crop, mean, std)
