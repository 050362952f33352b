"""Dataset-level segmentation metrics from one int64 confusion matrix.

``matrix[t, p]`` counts pixels of ground-truth class ``t`` predicted as ``p``, summed over
the whole split: mIoU is a dataset-level number (totals over all images), as mmseg and
the Cityscapes evaluator compute it, never a mean of per-image scores. A class absent
from both ground truth and prediction over the split has an undefined IoU (NaN) and is
left out of the means; a class predicted but never in the ground truth has IoU 0.
Merging two states is adding their matrices, so distributed evaluation is one
``all_reduce(SUM)``.
"""
from __future__ import annotations

import numpy as np
import torch


def confusion_counts(pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = 255) -> torch.Tensor:
    """(K, K) int64 counts for one prediction/label pair of the same shape."""
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} differs from label shape {tuple(target.shape)}")
    target = target.reshape(-1).long()
    pred = pred.reshape(-1).long().to(target.device)
    keep = target != ignore_index
    target, pred = target[keep], pred[keep]
    if target.numel() and (int(target.max()) >= num_classes or int(target.min()) < 0):
        raise ValueError(f"label values must be in [0, {num_classes}) or {ignore_index}")
    if pred.numel() and (int(pred.max()) >= num_classes or int(pred.min()) < 0):
        raise ValueError(f"predicted class ids must be in [0, {num_classes})")
    counts = torch.bincount(target * num_classes + pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).cpu()


def scores_from_matrix(matrix: np.ndarray) -> dict[str, np.ndarray | float]:
    """Per-class IoU / Acc / Dice and their means (in %), aAcc and fwIoU."""
    matrix = np.asarray(matrix, dtype=np.float64)
    tp = np.diag(matrix)
    gt = matrix.sum(1)  # label area per class
    pred = matrix.sum(0)  # predicted area per class
    union = gt + pred - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = tp / union  # NaN when the class is absent from both
        acc = tp / gt  # NaN when absent from the ground truth
        dice = 2 * tp / (gt + pred)
        total = gt.sum()
        aacc = tp.sum() / total if total else np.nan
        freq = gt / total if total else np.full_like(gt, np.nan)
    present = ~np.isnan(iou)
    fwiou = float(np.sum(freq[present] * iou[present])) if total else np.nan
    return {
        "IoU": iou * 100, "Acc": acc * 100, "Dice": dice * 100,
        "mIoU": _nanmean(iou) * 100, "mAcc": _nanmean(acc) * 100, "mDice": _nanmean(dice) * 100,
        "aAcc": aacc * 100, "fwIoU": fwiou * 100,
    }


def _nanmean(values: np.ndarray) -> float:
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else float("nan")


class ConfusionMatrix:
    """Metric state: ``update`` per image, ``compute`` at the end, ``merge`` across shards."""

    def __init__(self, num_classes: int, ignore_index: int = 255):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.reset()

    def reset(self) -> None:
        self.matrix = np.zeros((self.num_classes, self.num_classes), np.int64)

    def update(self, pred, target) -> np.ndarray:
        """Add one image (or batch); returns that image's own (K, K) counts."""
        counts = confusion_counts(torch.as_tensor(pred), torch.as_tensor(target), self.num_classes,
                                  self.ignore_index).numpy()
        self.matrix += counts
        return counts

    def merge(self, other: "ConfusionMatrix") -> "ConfusionMatrix":
        if other.num_classes != self.num_classes:
            raise ValueError("cannot merge confusion matrices of different class counts")
        self.matrix += other.matrix
        return self

    def compute(self) -> dict[str, np.ndarray | float]:
        return scores_from_matrix(self.matrix)
