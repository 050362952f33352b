"""Dataset-level segmentation metrics from one int64 confusion matrix.

``matrix[t, p]`` counts pixels of ground-truth class ``t`` predicted as ``p``, summed over
the whole split: mIoU is a dataset-level number (totals over all images), as mmseg and
the Cityscapes evaluator compute it, never a mean of per-image scores. The matrix has one
extra column, ``matrix[t, K]``: pixels the prediction left unlabelled (predicted as the
ignore index, as a challenge submission in official label ids may do for void classes).
They are misses of class ``t`` and false positives of no class, as in the Cityscapes
evaluator; a model's argmax never produces them.

A class absent from both ground truth and prediction over the split has an undefined IoU
(NaN) and is left out of the means; a class predicted but never in the ground truth has
IoU 0. The matrix is a summed state (``segbench.metrics.state``), so distributed
evaluation is one ``all_reduce(SUM)``.
"""
from __future__ import annotations

import numpy as np
import torch

from segbench.metrics.state import MetricState


def confusion_counts(pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = 255) -> torch.Tensor:
    """(K, K + 1) int64 counts for one prediction/label pair of the same shape."""
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} differs from label shape {tuple(target.shape)}")
    target = target.reshape(-1).long()
    pred = pred.reshape(-1).long().to(target.device)
    keep = target != ignore_index
    target, pred = target[keep], pred[keep]
    if target.numel() and (int(target.max()) >= num_classes or int(target.min()) < 0):
        raise ValueError(f"label values must be in [0, {num_classes}) or {ignore_index}")
    pred = torch.where(pred == ignore_index, num_classes, pred)  # unlabelled -> the extra column
    if pred.numel() and (int(pred.max()) > num_classes or int(pred.min()) < 0):
        raise ValueError(f"predicted class ids must be in [0, {num_classes}) or {ignore_index} (unlabelled)")
    counts = torch.bincount(target * (num_classes + 1) + pred, minlength=num_classes * (num_classes + 1))
    return counts.reshape(num_classes, num_classes + 1).cpu()


def class_counts(matrix: np.ndarray) -> np.ndarray:
    """(..., 3, K) [intersection, label area, predicted area] of (..., K, K or K + 1) matrices."""
    matrix = np.asarray(matrix)
    k = matrix.shape[-2]
    tp = np.diagonal(matrix[..., :k], axis1=-2, axis2=-1)
    return np.stack([tp, matrix.sum(-1), matrix[..., :k].sum(-2)], axis=-2)


def scores_from_counts(counts: np.ndarray) -> dict[str, np.ndarray]:
    """Per-class IoU / Acc / Dice and their means (in %), aAcc and fwIoU from (..., 3, K)
    [intersection, label area, predicted area] counts; leading axes are kept (e.g. bootstrap
    resamples)."""
    counts = np.asarray(counts, dtype=np.float64)
    tp, gt, pred = counts[..., 0, :], counts[..., 1, :], counts[..., 2, :]
    union = gt + pred - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = tp / union  # NaN when the class is absent from both
        acc = tp / gt  # NaN when absent from the ground truth
        dice = 2 * tp / (gt + pred)
        total = gt.sum(-1)
        aacc = tp.sum(-1) / total
        fwiou = np.nansum(gt * iou, -1) / total
    return {
        "IoU": iou * 100, "Acc": acc * 100, "Dice": dice * 100,
        "mIoU": nanmean(iou) * 100, "mAcc": nanmean(acc) * 100, "mDice": nanmean(dice) * 100,
        "aAcc": aacc * 100, "fwIoU": fwiou * 100,
    }


def scores_from_matrix(matrix: np.ndarray) -> dict[str, np.ndarray | float]:
    """Per-class IoU / Acc / Dice and their means (in %), aAcc and fwIoU of one matrix."""
    return {name: value if value.ndim else float(value) for name, value in scores_from_counts(class_counts(matrix)).items()}


def nanmean(values: np.ndarray) -> np.ndarray:
    """Mean over the last axis of the defined (non-NaN) entries; NaN where none is defined."""
    defined = ~np.isnan(values)
    count = defined.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, np.where(defined, values, 0).sum(-1) / count, np.nan)


class ConfusionMatrix(MetricState):
    """Metric state: ``update`` per image, ``compute`` at the end; the matrix sums across processes."""

    def __init__(self, num_classes: int, ignore_index: int = 255):
        super().__init__()
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.add_state("matrix", np.zeros((num_classes, num_classes + 1), np.int64), "sum")

    def update(self, pred, target) -> np.ndarray:
        """Add one image (or batch); returns that image's own (K, K + 1) counts."""
        self._check_open()
        counts = confusion_counts(torch.as_tensor(pred), torch.as_tensor(target), self.num_classes,
                                  self.ignore_index).numpy()
        self.matrix += counts
        return counts

    def compute(self) -> dict[str, np.ndarray | float]:
        return scores_from_matrix(self.matrix)
