"""Prediction previews: saved at evaluation time (opt-in, ``previews: N`` in a suite's
``evaluate`` block), drawn by the report as qualitative overlays (image, ground truth,
each model's prediction, as Segmenter Fig. 3 / SegFormer Fig. 5).

Label maps are palette PNGs: the pixel values are the class ids (255 = unlabelled) and the
palette is the dataset's colours, so a file is both exact and viewable. The image and its
ground truth are the same for every model and are written once per dataset split.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from segbench.files import atomic_write
from segbench.robustness.sweep import PREVIEW_WIDTH, write_preview


def write_label_preview(path: Path, ids: np.ndarray, palette: np.ndarray) -> None:
    """A (H, W) class-id map as a palette PNG (nearest-neighbour downscale to the preview width)."""
    ids = np.asarray(ids, np.uint8)
    if ids.shape[1] > PREVIEW_WIDTH:
        height = round(ids.shape[0] * PREVIEW_WIDTH / ids.shape[1])
        ids = cv2.resize(ids, (PREVIEW_WIDTH, height), interpolation=cv2.INTER_NEAREST)
    colours = np.zeros((256, 3), np.uint8)  # unlabelled (255) stays black
    colours[:len(palette)] = palette
    image = Image.fromarray(ids, mode="P")
    image.putpalette(colours.flatten().tolist())
    with atomic_write(path) as f:
        image.save(f, format="PNG")


class PreviewWriter:
    """Evaluator-shaped (``process`` / ``synchronize``): keeps the first ``count`` predictions
    it sees as PNGs under ``results_dir``. ``written`` lists them for the record, with paths
    relative to ``results_dir``. Under torch.distributed, give it to the main process only:
    its first images are then those of rank 0's shard."""

    def __init__(self, results_dir: Path, job_id: str, dataset_key: dict, count: int, palette: np.ndarray):
        self.results_dir, self.count, self.palette = Path(results_dir), count, palette
        shared = hashlib.sha256(json.dumps(dataset_key, sort_keys=True, default=str).encode()).hexdigest()[:12]
        self.shared = Path("previews") / shared  # image + ground truth: one copy for every model
        self.own = Path("previews") / job_id  # this job's predictions
        self.written: list[dict] = []

    def process(self, sample, pred, scores=None) -> None:
        if len(self.written) >= self.count:
            return
        stem = sample.name.replace("/", "_")
        entry = {"name": sample.name, "image": str(self.shared / f"{stem}.image.png"),
                 "label": str(self.shared / f"{stem}.label.png"), "prediction": str(self.own / f"{stem}.png")}
        if not (self.results_dir / entry["image"]).exists():
            write_preview(self.results_dir / entry["image"], sample.image)
            write_label_preview(self.results_dir / entry["label"], sample.label, self.palette)
        write_label_preview(self.results_dir / entry["prediction"], np.asarray(pred), self.palette)
        self.written.append(entry)

    def synchronize(self) -> None:
        """Nothing to gather: each file is written when its prediction is made."""
