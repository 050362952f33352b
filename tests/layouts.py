"""Writers of small fixture trees in each dataset's official on-disk layout (for tests)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def save(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array) if mode is None else Image.fromarray(array).convert(mode)
    image.save(path)
    return path


def rgb(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def write_ade(root: Path, labels: list[np.ndarray], split_folder: str = "validation",
              instances: list[np.ndarray] | None = None, prefix: str = "ADE_val") -> list[str]:
    """ADEChallengeData2016 layout; ``labels`` hold ADE ids (0 = other, 1..150)."""
    rng = np.random.default_rng(0)
    names = []
    for i, label in enumerate(labels):
        name = f"{prefix}_{i + 1:08d}"
        h, w = label.shape
        save(root / "images" / split_folder / f"{name}.jpg", rgb(rng, h, w))
        save(root / "annotations" / split_folder / f"{name}.png", label.astype(np.uint8))
        if instances is not None:
            encoded = np.zeros((h, w, 3), np.uint8)
            encoded[..., 0] = np.where(instances[i] > 0, label, 0)
            encoded[..., 1] = instances[i]
            save(root / "annotations_instance" / split_folder / f"{name}.png", encoded)
        names.append(name)
    return names


def write_cityscapes(root: Path, label_ids: list[np.ndarray], split: str = "val",
                     instance_ids: list[np.ndarray] | None = None, city: str = "lindau") -> list[str]:
    """leftImg8bit / gtFine layout; ``label_ids`` hold Cityscapes label ids (0..33)."""
    rng = np.random.default_rng(1)
    names = []
    for i, label in enumerate(label_ids):
        name = f"{city}_{i:06d}_000019"
        h, w = label.shape
        save(root / "leftImg8bit" / split / city / f"{name}_leftImg8bit.png", rgb(rng, h, w))
        save(root / "gtFine" / split / city / f"{name}_gtFine_labelIds.png", label.astype(np.uint8))
        if instance_ids is not None:
            save(root / "gtFine" / split / city / f"{name}_gtFine_instanceIds.png", instance_ids[i].astype(np.uint16))  # 16-bit, as the official PNGs
        names.append(name)
    return names


def write_pascal_context(root: Path, labels: list[np.ndarray], split: str = "val") -> list[str]:
    """VOCdevkit/VOC2010 layout under ``root``; ``labels`` hold ids 0 (background)..59."""
    voc = root / "VOCdevkit" / "VOC2010"
    rng = np.random.default_rng(2)
    names = [f"2008_{i:06d}" for i in range(len(labels))]
    for name, label in zip(names, labels):
        h, w = label.shape
        save(voc / "JPEGImages" / f"{name}.jpg", rgb(rng, h, w))
        save(voc / "SegmentationClassContext" / f"{name}.png", label.astype(np.uint8))
    (voc / "ImageSets" / "SegmentationContext").mkdir(parents=True, exist_ok=True)
    (voc / "ImageSets" / "SegmentationContext" / f"{split}.txt").write_text("\n".join(names) + "\n")
    return names


def write_coco_stuff(root: Path, labels: list[np.ndarray], train_ids: bool, split_folder: str = "val2017") -> list[str]:
    """mmseg's COCO-Stuff 164k layout; ``labels`` hold train ids (``*_labelTrainIds.png``)
    or 0-based COCO ids (the official stuffthingmaps ``*.png``)."""
    rng = np.random.default_rng(3)
    names = [f"{i + 139:012d}" for i in range(len(labels))]
    for name, label in zip(names, labels):
        h, w = label.shape
        save(root / "images" / split_folder / f"{name}.jpg", rgb(rng, h, w))
        suffix = "_labelTrainIds.png" if train_ids else ".png"
        save(root / "annotations" / split_folder / f"{name}{suffix}", label.astype(np.uint8))
    return names


def write_acdc(root: Path, labels: dict[str, list[np.ndarray]], invalid: dict[str, list[np.ndarray]] | None = None,
               split: str = "val", sequence: str = "GOPR0475") -> list[str]:
    """ACDC layout (rgb_anon/ + gt/ per condition); ``labels`` per condition hold Cityscapes
    train ids; ``invalid`` the matching invalid-region masks (1 = invalid), written as ``_gt_invIds.png``."""
    rng = np.random.default_rng(4)
    names = []
    for condition, maps in labels.items():
        for i, label in enumerate(maps):
            name = f"{sequence}_frame_{i:06d}"
            h, w = label.shape
            save(root / "rgb_anon" / condition / split / sequence / f"{name}_rgb_anon.png", rgb(rng, h, w))
            gt = root / "gt" / condition / split / sequence
            save(gt / f"{name}_gt_labelTrainIds.png", label.astype(np.uint8))
            if invalid is not None:
                save(gt / f"{name}_gt_invIds.png", invalid[condition][i].astype(np.uint8))
            names.append(name)
    return names


def write_dark_zurich(root: Path, labels: list[np.ndarray], invalid: list[np.ndarray] | None = None,
                      sequence: str = "GOPR0356") -> list[str]:
    """Dark Zurich val layout; ``labels`` hold Cityscapes train ids; ``invalid`` the
    invalid-region masks, written as ``_gt_invGray.png`` (255 = invalid)."""
    rng = np.random.default_rng(5)
    names = []
    for i, label in enumerate(labels):
        name = f"{sequence}_frame_{i:06d}"
        h, w = label.shape
        save(root / "rgb_anon" / "val" / "night" / sequence / f"{name}_rgb_anon.png", rgb(rng, h, w))
        gt = root / "gt" / "val" / "night" / sequence
        save(gt / f"{name}_gt_labelTrainIds.png", label.astype(np.uint8))
        if invalid is not None:
            save(gt / f"{name}_gt_invGray.png", (invalid[i] > 0).astype(np.uint8) * 255)
        names.append(name)
    return names
