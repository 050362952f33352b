"""Corruption sweeps: models x corruptions x severities on top of a test-time protocol.

The runner makes one job (and one record) per (model, corruption, severity), plus one
on the clean images, so an interrupted sweep restarts where it stopped. A cell's images
come either from a cache written by ``segbench corrupt`` (its manifest's checksums are
verified on reading) or are corrupted on the fly with the same seeds.

Records of one sweep share ``sweep.key`` (dataset, split, protocol settings, image count
and source; not the model nor the grid). :func:`collect_sweeps` groups them back for the
scores and the report.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from segbench.data.datasets import Sample, SegDataset, read_image
from segbench.files import atomic_write
from segbench.identity import file_sha256
from segbench.robustness.corruptions import CorruptionError, corrupt_image, image_id, pixels_sha256, read_manifest
from segbench.robustness.scores import corruption_degradation, robustness_scores, severity_curves

CLEAN = "clean"  # the corruption name of a sweep's uncorrupted cell (severity 0)
PREVIEW_WIDTH = 512  # previews of each cell's first image, for the report's grid


class CorruptionCache:
    """Reads corrupted images from a folder written by ``segbench corrupt``, checking each
    file's sha256, and that it was made from the very pixels being evaluated, against the
    manifest."""

    def __init__(self, root: str | os.PathLike, kind: str, split: str):
        self.root = Path(root)
        manifest = read_manifest(self.root)
        if manifest is None:
            raise CorruptionError(f"{self.root}: no manifest.json; write the cache with `segbench corrupt`")
        made_from = manifest["dataset"]
        if (made_from["kind"], made_from["split"]) != (kind, split):
            raise CorruptionError(f"{self.root}: holds corrupted {made_from['kind']} ({made_from['split']}) images, "
                                  f"but the sweep evaluates {kind} ({split})")
        self.index = {(e["image_id"], e["corruption"], e["severity"]): (path, e["sha256"], e["source_pixels_sha256"])
                      for path, e in manifest["images"].items()}

    def image(self, name: str, corruption: str, severity: int, source: np.ndarray) -> np.ndarray:
        """The cached corruption of ``source`` (the clean image ``name``), checked against the manifest."""
        if (name, corruption, severity) not in self.index:
            raise CorruptionError(f"{self.root}: no {corruption} severity {severity} image for {name}; generate it "
                                  f"with `segbench corrupt ... --out {self.root} --corruptions {corruption} "
                                  f"--severities {severity}`")
        path, sha, source_sha = self.index[name, corruption, severity]
        if pixels_sha256(source) != source_sha:
            raise CorruptionError(f"{self.root / path}: was made from other pixels than this dataset's {name} "
                                  "(or another image size); regenerate the cache from this dataset")
        if file_sha256(self.root / path) != sha:
            raise CorruptionError(f"{self.root / path}: its sha256 differs from the manifest; the cache was "
                                  "modified. Regenerate it into a new folder.")
        return read_image(self.root / path)


class CorruptedDataset:
    """A dataset whose images are corrupted (from ``cache``, or on the fly); labels unchanged."""

    def __init__(self, dataset: SegDataset, corruption: str, severity: int, cache: CorruptionCache | None = None):
        self.dataset, self.corruption, self.severity, self.cache = dataset, corruption, severity, cache

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name):  # classes, num_classes, test_scale, ...: those of the dataset
        return getattr(self.dataset, name)

    def __getitem__(self, index: int) -> Sample:
        sample, name = self.dataset[index], image_id(self.dataset, index)
        if self.cache is not None:
            image = self.cache.image(name, self.corruption, self.severity, sample.image)
        else:
            image = corrupt_image(sample.image, name, self.corruption, self.severity)
        return Sample(image, sample.label, sample.instances, sample.name)


def sweep_key(dataset: dict, settings: dict) -> str:
    """What makes cells comparable: dataset, split, protocol settings, images, source."""
    blob = json.dumps({"dataset": dataset, "settings": settings}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def corrupted_view(dataset: SegDataset, corruption: str, severity: int, cache: CorruptionCache | None = None):
    """The dataset seen under one cell: itself for ``CLEAN``, else a :class:`CorruptedDataset`."""
    return dataset if corruption == CLEAN else CorruptedDataset(dataset, corruption, severity, cache)


def source_of(corruption: str, cache: CorruptionCache | None) -> str:
    """Where a cell's images come from, as records say it."""
    return CLEAN if corruption == CLEAN else str(cache.root) if cache is not None else "on_the_fly"


def write_preview(path: Path, image: np.ndarray) -> None:
    """A small copy of a cell's first image, for the report's grid."""
    if image.shape[1] > PREVIEW_WIDTH:
        height = round(image.shape[0] * PREVIEW_WIDTH / image.shape[1])
        image = cv2.resize(image, (PREVIEW_WIDTH, height), interpolation=cv2.INTER_AREA)
    with atomic_write(path) as f:
        Image.fromarray(image).save(f, format="PNG")


# --------------------------------------------------------------------------- records -> scores


@dataclass
class Sweep:
    """The records of one sweep, regrouped: cells per model, the grid, the reference."""

    key: str
    dataset: str
    split: str
    protocol: str
    grid: dict[str, tuple[int, ...]]
    reference: str | None
    arch: dict[str, str] = field(default_factory=dict)  # model -> registry name
    clean: dict[str, float] = field(default_factory=dict)  # model -> mIoU
    cells: dict[str, dict[tuple[str, int], float]] = field(default_factory=dict)  # model -> cells
    previews: dict[tuple[str, int], str] = field(default_factory=dict)  # (corruption, severity) -> path
    images: int | None = None  # images per cell

    @property
    def models(self) -> list[str]:
        return list(self.arch)

    def scores(self, model: str) -> dict:
        """Table 5 cells, groups, mPC, rPC (+ CD against the reference); raises on a missing cell."""
        clean, cells = self.clean.get(model), self.cells.get(model, {})
        out = robustness_scores(clean, cells, self.grid, model)
        out["curves"] = severity_curves(clean, cells, self.grid, model)
        if self.reference is not None:
            out |= corruption_degradation(clean, cells, self.clean.get(self.reference),
                                          self.cells.get(self.reference, {}), self.grid, model, self.reference)
        return out


def collect_sweeps(records: list[dict], results_dir: Path | None = None) -> list[Sweep]:
    """Group corruption records (oldest first) into sweeps; the newest record's grid and
    reference are the sweep's. Failed cells stay missing, so their scores raise."""
    sweeps: dict[str, Sweep] = {}
    for r in records:
        if r.get("kind") != "corruption":
            continue
        info = r["sweep"]
        sweep = sweeps.setdefault(info["key"], Sweep(info["key"], r["config"]["dataset"]["kind"],
                                                     r["config"]["eval"]["split"], r["config"]["eval"]["protocol"],
                                                     {}, None))
        sweep.grid = {c: tuple(s) for c, s in info["grid"].items()}
        sweep.reference = info["reference"]
        sweep.arch.setdefault(r["model"], r["arch"])
        if r.get("status") != "ok":
            continue
        corruption, severity, miou = r["corruption"], r["severity"], r["metrics"]["mIoU"]
        sweep.images = r["timings"]["images"]
        if corruption == CLEAN:
            sweep.clean[r["model"]] = miou
        else:
            sweep.cells.setdefault(r["model"], {})[corruption, severity] = miou
        preview = Path(results_dir or ".") / r["preview"]
        if preview.is_file():
            sweep.previews[corruption, severity] = str(preview)
    return list(sweeps.values())
