"""Boundary IoU for semantic segmentation (Cheng et al., "Boundary IoU: Improving
Object-Centric Image Segmentation Evaluation", CVPR 2021).

Per class c and image, the boundary region of a mask M (the pixels of class c in the
ground truth, or in the prediction) is M_d = the pixels of M within distance d of a pixel
outside M: ``M - erode(M)``. As in the authors' boundary-iou-api
(``boundary_iou/utils/boundary_utils.py``, ``mask_to_boundary``):

- d = round(dilation_ratio x image diagonal) pixels, at least 1 (ratio 0.02 by default);
- the distance is the chessboard one (erosion by a 3x3 square, d times, i.e. a
  (2d+1) x (2d+1) square);
- the image is padded with one pixel of background, so a mask cut by the image border has
  a boundary there: a pixel at row r (0-based) is r + 1 pixels from the outside.

Here one min and one max filter of the class-id map give every class's boundary at once:
a pixel lies in its class's boundary region iff its (2d+1)^2 window holds another id, an
ignored pixel, or the outside of the image (the filters' border value, an id no class
has). Maps are filtered as uint8 where the classes leave a spare id (OpenCV's fastest
path), else as uint16. The ignore label
is a region of no class (so a class has a boundary where it meets an ignored region),
and ignored pixels are not counted, as in mIoU.

Per class the split-level counts are exact integers: intersection |G_d ∩ P_d|, and the
areas |G_d| and |P_d| (union = |G_d| + |P_d| - intersection); BIoU = intersection / union,
summed over all images as mIoU is. A class whose boundary regions are empty in both over
the split has an undefined BIoU and is left out of mBIoU. min(IoU, BIoU) per class (IoU from
the split's confusion matrix) is the paper's recommendation for a measure sensitive to both
region and boundary errors.
"""
from __future__ import annotations

import cv2
import numpy as np

from segbench.metrics.confusion import nanmean, scores_from_counts
from segbench.metrics.state import MetricState

DILATION_RATIO = 0.02
EXACT_HISTOGRAM_PIXELS = 2 ** 24  # OpenCV histograms count in float32: exact below this many pixels


def id_dtype(num_classes: int, ignore_index: int = 255) -> type:
    """uint8 when an id other than the classes and the ignore label is left for the outside."""
    return np.uint8 if num_classes < 255 and ignore_index == 255 else np.uint16


def _outside(dtype) -> int:
    """The id of the image's outside: 254 in uint8 (classes < 254, 255 = ignore), else 65535."""
    return 254 if dtype == np.uint8 else np.iinfo(np.uint16).max


def dilation_pixels(height: int, width: int, ratio: float = DILATION_RATIO) -> int:
    """d of the official ``mask_to_boundary``: round(ratio x diagonal), at least 1."""
    return max(1, int(round(ratio * np.sqrt(height ** 2 + width ** 2))))


def boundary_band(ids: np.ndarray, d: int) -> np.ndarray:
    """(H, W) bool: pixels within chessboard distance ``d`` of a pixel of another id or of
    the image's outside, i.e. each pixel's membership of its own id's boundary region."""
    if ids.dtype not in (np.uint8, np.uint16):
        ids = ids.astype(np.uint16)
    ids = np.ascontiguousarray(ids)
    kernel = np.ones((2 * d + 1, 2 * d + 1), np.uint8)
    outside = _outside(ids.dtype)
    low = cv2.erode(ids, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=outside)
    high = cv2.dilate(ids, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=outside)
    return (low != ids) | (high != ids)


def _histogram(ids: np.ndarray, mask: np.ndarray, n: int) -> np.ndarray:
    """(n,) int64 counts of ids 0..n-1 where ``mask``."""
    if ids.dtype == np.uint8 and ids.size < EXACT_HISTOGRAM_PIXELS:
        hist = cv2.calcHist([ids], [0], mask.view(np.uint8), [256], [0, 256])
        return hist.reshape(-1)[:n].astype(np.int64)
    return np.bincount(ids[mask].astype(np.int64), minlength=n)[:n]


def boundary_counts(pred: np.ndarray, label: np.ndarray, num_classes: int, d: int,
                    ignore_index: int = 255) -> np.ndarray:
    """(3, K) int64 [|G_d ∩ P_d|, |G_d|, |P_d|] per class of one image, over its labelled pixels."""
    pred, label = np.asarray(pred), np.asarray(label)
    if pred.shape != label.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from label shape {label.shape}")
    dtype = id_dtype(num_classes, ignore_index)
    pred, label = pred.astype(dtype, copy=False), label.astype(dtype, copy=False)  # ids < 256 (or 65536) fit
    labelled = label != ignore_index
    gt_band = boundary_band(label, d) & labelled
    pred_band = boundary_band(pred, d) & labelled  # unlabelled predictions (255) are counted in no class
    both = gt_band & pred_band & (pred == label)
    return np.stack([_histogram(ids, mask, num_classes)
                     for ids, mask in ((label, both), (label, gt_band), (pred, pred_band))])


class BoundaryIoU(MetricState):
    """Metric state: split-level boundary counts (3, K), summed across processes."""

    def __init__(self, num_classes: int, dilation_ratio: float = DILATION_RATIO, ignore_index: int = 255):
        if not 0 < dilation_ratio < 1:
            raise ValueError(f"the boundary dilation ratio must be in (0, 1), got {dilation_ratio}")
        super().__init__()
        self.num_classes, self.dilation_ratio, self.ignore_index = num_classes, dilation_ratio, ignore_index
        self.add_state("boundary", np.zeros((3, num_classes), np.int64), "sum")

    def update(self, pred, label) -> None:
        self._check_open()
        pred, label = np.asarray(pred), np.asarray(label)
        d = dilation_pixels(*label.shape, self.dilation_ratio)
        self.boundary += boundary_counts(pred, label, self.num_classes, d, self.ignore_index)

    def compute(self, class_names: tuple[str, ...], iou: np.ndarray) -> dict:
        """``iou``: (K,) region IoU (%) of the same split, for min(IoU, BIoU)."""
        biou = scores_from_counts(self.boundary)["IoU"]
        both = np.where(np.isnan(biou) | np.isnan(iou), np.nan, np.fmin(iou, biou))
        return {"mBIoU": float(nanmean(biou)), "BIoU": dict(zip(class_names, biou.tolist())),
                "mIoU_BIoU_min": float(nanmean(both)), "IoU_BIoU_min": dict(zip(class_names, both.tolist())),
                "dilation_ratio": self.dilation_ratio}
