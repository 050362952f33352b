"""Per-image statistics: fine-grained mIoU and bootstrap uncertainty over images.

Each image is kept as three K-vectors, [intersection, label area, predicted area] (the
``class_counts`` of its confusion matrix): enough to recompute the dataset-level mIoU of
any multiset of images, at 3K integers per image instead of K x K.

- Per-image mIoU follows Wang et al. ("Revisiting Evaluation Metrics for Semantic
  Segmentation", NeurIPS 2023, mIoU^I as in their code, zifuwanggg/JDTLosses): an image's
  IoU averaged over the classes in its ground truth; images without labelled pixels have
  none. The worst-decile mean averages the lowest 10 % of images (at least one).
- Bootstrap: resample the images with replacement, recompute the dataset-level mIoU from
  the summed counts; the 95 % interval is the 2.5 / 97.5 percentiles (percentile bootstrap).
- Paired bootstrap ("A beats B"): the same resamples of the same images for both models;
  ``p_value`` is the share of resamples in which A's mIoU is not above B's, a one-sided
  bootstrap estimate (Koehn, EMNLP 2004).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from segbench.errors import SegbenchError
from segbench.files import atomic_write
from segbench.metrics.confusion import class_counts, nanmean, scores_from_counts
from segbench.metrics.state import MetricState

WORST_FRACTION = 0.1


class PerImageCounts(MetricState):
    """Metric state: each image's [intersection, label area, predicted area] per class
    (gathered across processes, in dataset order)."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = num_classes
        self.add_state("names", [], "gather")
        self.add_state("rows", [], "gather")

    def update(self, image_matrix: np.ndarray, name: str) -> None:
        """Add one image from its own (K, K + 1) confusion counts."""
        self._check_open()
        self.names.append(name)
        self.rows.append(class_counts(image_matrix).astype(np.int64))

    @property
    def counts(self) -> np.ndarray:
        """(N, 3, K) int64."""
        return np.stack(self.rows) if self.rows else np.zeros((0, 3, self.num_classes), np.int64)

    def compute(self) -> dict:
        miou = per_image_miou(self.counts)
        scored = miou[~np.isnan(miou)]
        return {"images": len(self.names), "images_scored": int(scored.size),
                "mIoU_mean": float(scored.mean() * 100) if scored.size else float("nan"),
                "mIoU_worst10": worst_mean(scored) * 100}


def per_image_miou(counts: np.ndarray) -> np.ndarray:
    """(N,) mIoU of each image over the classes in its ground truth (a fraction, NaN if none)."""
    counts = np.asarray(counts, np.float64)
    tp, gt, pred = counts[:, 0], counts[:, 1], counts[:, 2]
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(gt > 0, tp / (gt + pred - tp), np.nan)
    return nanmean(iou)


def worst_mean(values: np.ndarray, fraction: float = WORST_FRACTION) -> float:
    """Mean of the lowest ``fraction`` of ``values`` (at least one value; NaN if empty)."""
    if not len(values):
        return float("nan")
    count = max(1, int(fraction * len(values)))
    return float(np.sort(values)[:count].mean())


def _resample_weights(num_images: int, resamples: int, seed: int) -> np.ndarray:
    """(B, N) how often each image is drawn in each resample."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(num_images, np.full(num_images, 1 / num_images), size=resamples).astype(np.float64)


def _resampled_miou(counts: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(B,) dataset-level mIoU (%) of each resample. Sums of integer counts stay exact in
    float64 below 2^53 pixels."""
    flat = counts.reshape(len(counts), -1).astype(np.float64)
    totals = (weights @ flat).reshape(len(weights), *counts.shape[1:])
    return scores_from_counts(totals)["mIoU"]


def bootstrap_miou(counts: np.ndarray, resamples: int = 1000, seed: int = 0, confidence: float = 0.95) -> dict:
    """Percentile bootstrap interval of the dataset-level mIoU over images."""
    counts = np.asarray(counts)
    if len(counts) == 0 or resamples < 1:
        raise ValueError("the bootstrap needs at least one image and one resample")
    values = _resampled_miou(counts, _resample_weights(len(counts), resamples, seed))
    tail = (1 - confidence) / 2 * 100
    low, high = np.nanpercentile(values, [tail, 100 - tail])
    return {"low": float(low), "high": float(high), "std": float(np.nanstd(values)), "confidence": confidence,
            "resamples": resamples, "seed": seed}


def paired_bootstrap(counts_a: np.ndarray, counts_b: np.ndarray, resamples: int = 1000, seed: int = 0,
                     confidence: float = 0.95) -> dict:
    """Does model A beat model B on these images? Same resamples for both (paired)."""
    counts_a, counts_b = np.asarray(counts_a), np.asarray(counts_b)
    if counts_a.shape != counts_b.shape:
        raise ValueError(f"paired comparison needs the same images and classes, got {counts_a.shape} "
                         f"and {counts_b.shape}")
    weights = _resample_weights(len(counts_a), resamples, seed)
    delta = _resampled_miou(counts_a, weights) - _resampled_miou(counts_b, weights)
    observed = float(scores_from_counts(counts_a.sum(0))["mIoU"] - scores_from_counts(counts_b.sum(0))["mIoU"])
    tail = (1 - confidence) / 2 * 100
    low, high = np.nanpercentile(delta, [tail, 100 - tail])
    return {"delta_mIoU": observed, "low": float(low), "high": float(high), "confidence": confidence,
            "p_value": float(np.mean(delta <= 0)), "resamples": resamples, "seed": seed}


def save_per_image(path: Path, state: PerImageCounts, class_names: tuple[str, ...]) -> Path:
    """Write the per-image counts as a compressed .npz, atomically (temporary file + rename)."""
    path = Path(path)
    with atomic_write(path) as f:
        np.savez_compressed(f, counts=state.counts, names=np.array(state.names, dtype=str),
                            classes=np.array(class_names, dtype=str))
    return path


def load_per_image(path: Path) -> dict:
    """{counts (N, 3, K) int64, names (N,), classes (K,)} from a sidecar written by save_per_image."""
    with np.load(path, allow_pickle=False) as data:
        return {"counts": data["counts"], "names": data["names"].tolist(), "classes": data["classes"].tolist()}


class CompareError(SegbenchError, ValueError):
    """Two records cannot be compared; the message names the file and what to do."""


def _sidecar(path: Path, record: dict) -> dict:
    sidecar = path.parent / record["per_image_file"]
    if not sidecar.is_file():
        raise CompareError(f"{path}: its per-image counts {sidecar} are missing; keep the record's "
                           f"{record['per_image_file']} beside it (copy it with the record), or re-run the evaluation")
    try:
        return load_per_image(sidecar)
    except (OSError, ValueError, KeyError) as exc:  # a truncated or foreign .npz
        raise CompareError(f"{sidecar}: unreadable per-image counts ({type(exc).__name__}: {exc}); "
                           "re-run the evaluation") from None


def compare_records(path_a: Path, path_b: Path, resamples: int = 1000, seed: int = 0) -> dict:
    """Paired bootstrap of two evaluation records of the same split, from their sidecars."""
    from segbench.results import read_record

    sides = []
    for path in (Path(path_a), Path(path_b)):
        record = read_record(path)
        if not record or record.get("kind") != "eval" or record.get("status", "ok") != "ok":
            raise CompareError(f"{path}: not a finished evaluation record")
        if not record.get("per_image_file"):
            raise CompareError(f"{path}: the record has no per-image counts (evaluate with per_image: true)")
        sides.append((path, record, _sidecar(path, record)))
    (path_a, record_a, a), (path_b, record_b, b) = sides
    if record_a.get("dataset") != record_b.get("dataset") or a["classes"] != b["classes"]:
        raise CompareError(f"{path_a} and {path_b} evaluate different datasets "
                           f"({record_a.get('dataset')} vs {record_b.get('dataset')})")
    if a["names"] != b["names"]:
        raise CompareError(f"{path_a} and {path_b} cover different images ({len(a['names'])} vs "
                           f"{len(b['names'])}); a paired comparison needs the same images")
    result = paired_bootstrap(a["counts"], b["counts"], resamples, seed)
    return {"a": str(path_a), "b": str(path_b), "dataset": record_a.get("dataset"), "images": len(a["names"]),
            "mIoU_a": record_a["metrics"]["mIoU"], "mIoU_b": record_b["metrics"]["mIoU"], **result}
