"""Tiny folder datasets (segbench.data.folder) written the way a user brings them."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "custom_model"
PALETTE = np.array([[0, 0, 0], [220, 20, 60], [0, 0, 142]], np.uint8)  # examples/custom_model/classes.yaml


def shapes_scene(index: int, height: int = 48, width: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """An image and its class indices (0 background, 1 square, 2 disc, 255 a few ignored pixels)."""
    rng = np.random.default_rng(index)
    label = np.zeros((height, width), np.uint8)
    y, x = rng.integers(4, height // 2), rng.integers(4, width // 2)
    label[y:y + 14, x:x + 14] = 1
    yy, xx = np.mgrid[:height, :width]
    cy, cx = rng.integers(height // 2, height - 8), rng.integers(width // 2, width - 8)
    label[(yy - cy) ** 2 + (xx - cx) ** 2 < 49] = 2
    label[0, :3] = 255
    image = (PALETTE[np.minimum(label, 2)] * 0.8 + rng.integers(0, 50, (height, width, 3))).astype(np.uint8)
    return image, label


def write_folder_dataset(root: Path, splits: dict[str, int], encoding: str = "index",
                         classes: Path = EXAMPLE / "classes.yaml", subfolder: str = "") -> Path:
    """Write ``splits`` ({split: count}) under ``root`` with labels as class indices ("index"),
    palette images ("palette", mode P) or RGB colour maps ("rgb"), and the classes file."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(classes, root / "classes.yaml")
    for split, count in splits.items():
        for index in range(count):
            image, label = shapes_scene(index + 100 * len(split))
            name = f"{subfolder}scene_{index:03d}"
            for top in ("images", "labels"):
                (root / top / split / name).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(root / "images" / split / f"{name}.jpg", quality=95)
            label_path = root / "labels" / split / f"{name}.png"
            if encoding == "index":
                Image.fromarray(label).save(label_path)
            elif encoding == "palette":
                im = Image.fromarray(label, mode="L").convert("P")
                im.putpalette([v for c in PALETTE for v in c] + [0] * (768 - PALETTE.size))
                im.save(label_path)
            elif encoding == "rgb":
                rgb = np.where(label[..., None] == 255, 255, PALETTE[np.minimum(label, 2)]).astype(np.uint8)
                Image.fromarray(rgb).save(label_path)
            else:
                raise ValueError(encoding)
    return root
