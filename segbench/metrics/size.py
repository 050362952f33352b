"""Object-size breakdown: mIoU over the pixels of small, medium and large objects.

The protocol (segbench's; Segmenter's Table 4 reports such a table without a public
definition):

1. Segments. Every labelled pixel belongs to one segment: an annotated instance where the
   dataset has instance maps (Cityscapes ``*_instanceIds.png`` objects, ADE20K instance
   masks, the synthetic scenes' instances); every labelled pixel outside those is split
   into the 8-connected components of its ground-truth class.
2. Size. A segment's size is its area in pixels at label resolution. Buckets come from the
   dataset's ``size_buckets`` (a, b): small < a, medium < b, large >= b (default 32^2 and
   96^2, the COCO thresholds).
3. Score. Per bucket, a confusion matrix is accumulated over the pixels of the segments
   in that bucket only, and its mIoU is averaged over the classes present in that bucket's
   ground truth (a prediction of an absent class inside the bucket still lowers the IoU
   of the class it took pixels from, but does not add a zero for itself).

The buckets partition the labelled pixels, so their matrices sum to the full one.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch

from segbench.metrics.confusion import class_counts, confusion_counts, nanmean, scores_from_counts
from segbench.metrics.state import MetricState

BUCKET_NAMES = ("small", "medium", "large")


def label_segments(label: np.ndarray, instances: np.ndarray | None,
                   ignore_index: int = 255) -> tuple[np.ndarray, np.ndarray]:
    """Segment ids (H, W) int64 (0 = no segment: ignored pixels outside any instance) and
    each segment's area in pixels (index 0 unused)."""
    segments = np.zeros(label.shape, np.int64)
    next_id = 1
    if instances is not None:
        annotated = instances > 0
        ids, inverse = np.unique(instances[annotated], return_inverse=True)
        segments[annotated] = inverse.ravel() + 1
        next_id = len(ids) + 1
    uncovered = (segments == 0) & (label != ignore_index)
    for cls in np.unique(label[uncovered]):
        count, components = cv2.connectedComponents((uncovered & (label == cls)).astype(np.uint8), connectivity=8)
        inside = components > 0
        segments[inside] = components[inside] + (next_id - 1)
        next_id += count - 1
    areas = np.bincount(segments.ravel(), minlength=next_id)
    areas[0] = 0
    return segments, areas


class SizeBreakdown(MetricState):
    """Metric state: one (K, K + 1) confusion matrix per object-size bucket (summed across processes)."""

    def __init__(self, num_classes: int, thresholds: tuple[int, int] = (32 ** 2, 96 ** 2), ignore_index: int = 255):
        if len(thresholds) != len(BUCKET_NAMES) - 1 or list(thresholds) != sorted(thresholds):
            raise ValueError(f"size buckets need two increasing thresholds, got {thresholds}")
        super().__init__()
        self.num_classes, self.thresholds, self.ignore_index = num_classes, tuple(thresholds), ignore_index
        self.add_state("matrices", np.zeros((len(BUCKET_NAMES), num_classes, num_classes + 1), np.int64), "sum")
        self.add_state("segments", np.zeros(len(BUCKET_NAMES), np.int64), "sum")

    def update(self, pred, label: np.ndarray, instances: np.ndarray | None) -> None:
        self._check_open()
        label = np.asarray(label)
        pred = torch.as_tensor(pred)
        segments, areas = label_segments(label, instances, self.ignore_index)
        bucket = np.digitize(areas[segments], self.thresholds)  # 0 small, 1 medium, 2 large
        labelled = label != self.ignore_index
        for b in range(len(BUCKET_NAMES)):
            inside = (bucket == b) & labelled
            if inside.any():
                self.matrices[b] += confusion_counts(pred[torch.from_numpy(inside)], torch.from_numpy(label[inside]),
                                                     self.num_classes, self.ignore_index).numpy()
                self.segments[b] += len(np.unique(segments[inside]))

    def compute(self, class_names: tuple[str, ...] | None = None) -> dict:
        bounds = (0,) + self.thresholds + (None,)
        out = {}
        for b, name in enumerate(BUCKET_NAMES):
            counts = class_counts(self.matrices[b])
            present = counts[1] > 0
            iou = scores_from_counts(counts)["IoU"]
            out[name] = {
                "min_area": bounds[b], "max_area": bounds[b + 1],  # pixels: min_area <= area < max_area
                "mIoU": float(nanmean(np.where(present, iou, np.nan))),
                "pixels": int(counts[1].sum()), "segments": int(self.segments[b]),
                "classes_present": int(present.sum()),
            }
            if class_names is not None:
                out[name]["IoU"] = {c: float(v) if p else None for c, v, p in zip(class_names, iou, present)}
        return out
