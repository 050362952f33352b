"""Dataset readers. Each returns :class:`Sample` objects in one convention: an RGB uint8
image, a uint8 label map with classes 0..K-1 and 255 for ignored pixels, and (when the
dataset has them) an int32 instance map where 0 means "no instance".

Readers check the official on-disk layout up front and fail with a message that says
where the files must be, so a wrong ``root`` is found before any model runs.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from segbench.data import classes as class_names
from segbench.data import synthetic

IGNORE_INDEX = 255


class DatasetError(ValueError):
    """A dataset on disk is missing or malformed; the message says what to do."""


@dataclass
class Sample:
    image: np.ndarray  # (H, W, 3) uint8 RGB
    label: np.ndarray  # (H, W) uint8: 0..K-1, 255 = ignore
    instances: np.ndarray | None  # (H, W) int32, 0 = no instance; None if the dataset has none
    name: str


def default_palette(num_classes: int) -> np.ndarray:
    """The Pascal VOC bit-interleaved colour map: distinct, deterministic colours."""
    palette = np.zeros((num_classes, 3), np.uint8)
    for k in range(num_classes):
        c, value = k + 1, np.zeros(3, np.int64)
        for shift in range(7, -1, -1):
            for channel in range(3):
                value[channel] |= ((c >> channel) & 1) << shift
            c >>= 3
        palette[k] = value
    return palette


def read_image(path: Path) -> np.ndarray:
    """Any PIL-readable image as (H, W, 3) uint8 RGB (grayscale and RGBA are converted)."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def read_label(path: Path, num_classes: int, reduce_zero_label: bool) -> np.ndarray:
    """A label PNG as (H, W) uint8 in training ids; out-of-range values are an error."""
    with Image.open(path) as im:
        if im.mode not in ("L", "P", "I", "I;16"):
            raise DatasetError(f"{path}: label images must be single-channel (mode L or P), got mode {im.mode}")
        raw = np.asarray(im).astype(np.int64)
    if reduce_zero_label:  # ADE20K convention: 0 = other -> ignore, 1..K -> 0..K-1
        raw = np.where(raw == 0, IGNORE_INDEX + 1, raw) - 1
    bad = (raw >= num_classes) & (raw != IGNORE_INDEX)
    if bad.any():
        values = sorted(set(np.unique(raw[bad]).tolist()))[:5]
        shown = [v + 1 for v in values] if reduce_zero_label else values
        raise DatasetError(f"{path}: label values {shown} are outside the {num_classes} classes of this "
                           f"dataset (ignore is {IGNORE_INDEX}); is this the right dataset or annotation folder?")
    return raw.astype(np.uint8)


class SegDataset:
    """Base of the readers: a list of (image, label, instances) files and class metadata."""

    classes: tuple[str, ...] = ()
    # mmseg-style test resize (long side, short side), keep ratio; None keeps the image size.
    test_scale: tuple[int, int] | None = None
    # Object-size buckets (instance area in pixels): small < a, medium < b, large >= b.
    size_buckets: tuple[int, int] = (32 ** 2, 96 ** 2)
    reduce_zero_label = False

    def __init__(self, files: list[tuple[Path, Path, Path | None]], name: str):
        self.files = files
        self.name = name
        self.palette = default_palette(len(self.classes))

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Sample:
        image_path, label_path, instance_path = self.files[index]
        image = read_image(image_path)
        label = read_label(label_path, self.num_classes, self.reduce_zero_label)
        if image.shape[:2] != label.shape:
            raise DatasetError(f"{label_path}: label is {label.shape[1]}x{label.shape[0]} but its image "
                               f"{image_path.name} is {image.shape[1]}x{image.shape[0]}")
        instances = self.read_instances(instance_path) if instance_path else None
        return Sample(image, label, instances, image_path.stem)

    def read_instances(self, path: Path) -> np.ndarray:
        raise NotImplementedError


def _require_dir(path: Path, dataset: str, layout: str) -> None:
    if not path.is_dir():
        raise DatasetError(f"{dataset}: expected the folder {path} but it does not exist. "
                           f"Expected layout under the dataset root:\n{layout}")


ADE_LAYOUT = """\
  <root>/images/training/ADE_train_00000001.jpg ...
  <root>/images/validation/ADE_val_00000001.jpg ...
  <root>/annotations/training/ADE_train_00000001.png ...     (0 = other, 1..150 = classes)
  <root>/annotations/validation/ADE_val_00000001.png ...
  <root>/annotations_instance/validation/*.png               (optional: R = class, G = instance)
(the ADEChallengeData2016 folder from the SceneParsing benchmark)"""


class ADE20K(SegDataset):
    """ADEChallengeData2016: 150 classes; label 0 ("other") is ignored."""

    classes = class_names.ADE20K
    test_scale = (2048, 512)
    reduce_zero_label = True
    splits = {"train": "training", "val": "validation"}
    layout = ADE_LAYOUT

    def __init__(self, root: str | os.PathLike, split: str = "val"):
        root = Path(root)
        if split not in self.splits:
            raise DatasetError(f"{type(self).__name__}: unknown split {split!r}; choose from {sorted(self.splits)}")
        folder = self.splits[split]
        _require_dir(root / "images" / folder, type(self).__name__, self.layout)
        _require_dir(root / "annotations" / folder, type(self).__name__, self.layout)
        files = []
        for image_path in sorted((root / "images" / folder).iterdir()):
            if image_path.suffix.lower() not in (".jpg", ".jpeg", ".png"):
                continue
            label_path = root / "annotations" / folder / (image_path.stem + ".png")
            if not label_path.exists():
                raise DatasetError(f"{image_path}: no annotation at {label_path}")
            instance_path = root / "annotations_instance" / folder / (image_path.stem + ".png")
            files.append((image_path, label_path, instance_path if instance_path.exists() else None))
        if not files:
            raise DatasetError(f"{root / 'images' / folder}: no images found. Expected layout:\n{self.layout}")
        super().__init__(files, name=f"{type(self).__name__.lower()}/{split}")

    def read_instances(self, path: Path) -> np.ndarray:
        # ADE20K instance PNGs: R = class, G = instance index within the image.
        rgb = read_image(path).astype(np.int32)
        return np.where(rgb[..., 1] > 0, rgb[..., 0] * 256 + rgb[..., 1], 0)


# ADE20K's buckets scaled to 128 px scenes (ADE20K is tested at short side 512): the same
# fraction of the image, so "small" means the same thing relative to the scene.
SYNTHETIC_SIZE_BUCKETS = (16 ** 2, 48 ** 2)


class SyntheticOnDisk(ADE20K):
    """A materialised synthetic split, read through the ADE20K-layout reader."""

    classes = synthetic.CLASSES
    test_scale = None
    size_buckets = SYNTHETIC_SIZE_BUCKETS
    layout = ADE_LAYOUT.replace("ADE_train", "synthetic_train").replace("ADE_val", "synthetic_val")


class Synthetic(SegDataset):
    """The built-in synthetic scenes (see :mod:`segbench.data.synthetic`), from memory."""

    classes = synthetic.CLASSES
    size_buckets = SYNTHETIC_SIZE_BUCKETS
    default_sizes = {"train": 400, "val": 100, "test": 100}

    def __init__(self, split: str = "val", num_images: int | None = None, image_size: int = 128, seed: int = 0):
        if split not in synthetic.SPLIT_SEEDS:
            raise DatasetError(f"synthetic: unknown split {split!r}; choose from {sorted(synthetic.SPLIT_SEEDS)}")
        self.split, self.image_size, self.seed = split, image_size, seed
        count = self.default_sizes[split] if num_images is None else num_images
        super().__init__([None] * count, name=f"synthetic/{split}")
        self._cache: dict[int, Sample] = {}  # scenes are small; training revisits them often

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < len(self):
            raise IndexError(index)
        if index not in self._cache:
            image, ade_label, instances = synthetic.scene(index, self.split, self.seed, self.image_size)
            label = np.where(ade_label == 0, IGNORE_INDEX, ade_label.astype(np.int64) - 1).astype(np.uint8)
            self._cache[index] = Sample(image, label, instances, f"synthetic_{self.split}_{index + 1:08d}")
        return self._cache[index]


def materialize_synthetic(out: str | os.PathLike, splits: dict[str, int], image_size: int = 128, seed: int = 0) -> Path:
    """Write synthetic splits to ``out`` in the ADE20K layout (lossless PNG)."""
    out = Path(out)
    for split, count in splits.items():
        folder = ADE20K.splits[split]
        for sub in ("images", "annotations", "annotations_instance"):
            (out / sub / folder).mkdir(parents=True, exist_ok=True)
        for index in range(count):
            image, ade_label, instances = synthetic.scene(index, split, seed, image_size)
            name = f"synthetic_{split}_{index + 1:08d}"
            Image.fromarray(image).save(out / "images" / folder / f"{name}.png")
            Image.fromarray(ade_label).save(out / "annotations" / folder / f"{name}.png")
            encoded = np.zeros(image.shape, np.uint8)  # R = class, G = instance index
            encoded[..., 0] = np.where(instances > 0, ade_label, 0)
            encoded[..., 1] = instances  # < 256 instances per synthetic scene
            Image.fromarray(encoded).save(out / "annotations_instance" / folder / f"{name}.png")
    return out


DATASETS = {"synthetic": Synthetic, "ade20k": ADE20K}


def build_dataset(kind: str, split: str, root: str | None = None, **options) -> SegDataset:
    """Build a dataset by its kind name (the ``kind`` of a suite's dataset entry)."""
    if kind == "synthetic" and root is not None:
        return SyntheticOnDisk(root, split)
    if kind not in DATASETS:
        raise DatasetError(f"unknown dataset kind {kind!r}; choose from {sorted(DATASETS)}")
    if kind == "synthetic":
        return Synthetic(split, **options)
    if root is None:
        raise DatasetError(f"{kind}: no root given. Set the dataset's `root` in the suite "
                           f"(e.g. root: ${{SEGBENCH_DATA}}/{kind}). Expected layout:\n{DATASETS[kind].layout}")
    return DATASETS[kind](root, split, **options)
