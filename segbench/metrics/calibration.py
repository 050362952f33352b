"""Calibration and misclassification detection from per-pixel softmax probabilities,
accumulated over the split in fixed-size histograms (constant memory; shards add up).

Every labelled pixel (not the ignore label) is one sample: p = its (K,) probabilities, its
prediction argmax p, its confidence max p (the maximum softmax probability, MSP), correct
when the prediction equals the label.

- ECE (Guo et al., "On Calibration of Modern Neural Networks", ICML 2017): 15 equal-width
  confidence bins [i/15, (i+1)/15) (1.0 in the last), sum over bins of
  (pixels in bin / all pixels) x |accuracy - mean confidence in bin|, at dataset level
  (all pixels of the split together), as torchmetrics' ``MulticlassCalibrationError``
  (norm ``l1``). Per bin the state keeps the pixel count and correct count (int64) and the
  summed confidence (float64): the reliability diagram's data.
- NLL: mean of -ln p[label], with p clamped to at least 1e-12 (a float32 softmax rounds
  probabilities under ~1e-45 to 0; clamped, one pixel costs at most 27.6 nats).
- Brier score (Brier 1950, multiclass): mean over pixels of sum_k (p_k - [k = label])^2.
- Misclassification detection with the MSP (Hendrycks & Gimpel, ICLR 2017; metrics as
  Corbière et al., "Addressing Failure Prediction by Learning Model Confidence",
  NeurIPS 2019): AUROC of confidence separating correct from wrong pixels; AUPR-Error
  (wrong pixels positive, score -confidence) and AUPR-Success (correct positive, score
  confidence), average precision as scikit-learn's (no interpolation); FPR at 95 % TPR:
  the share of wrong pixels at or above the highest confidence threshold that keeps 95 %
  of the correct pixels.
  These come from two histograms of confidence (correct / wrong pixels) over
  ``DETECTION_BINS`` = 8000 bins equal in s = -log10(1 - confidence) on [0, 8) (s >= 8,
  i.e. confidence within 1e-8 of 1, which float32 rounds to 1, goes in the last): 1000 bins
  per decade of 1 - confidence, so the resolution follows the confidences a trained model
  produces (most pixels above 0.99) rather than wasting bins below 1/K; at confidence 0.5
  a bin is ~0.0012 wide, at 0.999 ~2.3e-6. Pixels in one bin are ties: AUROC is then the
  exact AUROC of the binned confidences (trapezoids over bin edges) and differs from the
  unbinned one by at most half the share of (correct, wrong) pairs sharing a bin.
"""
from __future__ import annotations

import numpy as np
import torch

from segbench.metrics.state import MetricState

ECE_BINS = 15
DETECTION_BINS = 8000
DETECTION_DECADES = 8
PROBABILITY_FLOOR = 1e-12


def detection_bin(confidence: torch.Tensor) -> torch.Tensor:
    """Histogram bin (0 .. DETECTION_BINS - 1) of each confidence, increasing with it."""
    s = -torch.log10((1 - confidence.double()).clamp_min(10.0 ** -DETECTION_DECADES))
    return (s * (DETECTION_BINS / DETECTION_DECADES)).long().clamp_(0, DETECTION_BINS - 1)


class Calibration(MetricState):
    """Metric state: ECE bins, NLL / Brier sums and confidence histograms, all summed across processes."""

    def __init__(self, num_classes: int, ignore_index: int = 255):
        super().__init__()
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.add_state("bin_pixels", np.zeros(ECE_BINS, np.int64), "sum")
        self.add_state("bin_correct", np.zeros(ECE_BINS, np.int64), "sum")
        self.add_state("bin_confidence", np.zeros(ECE_BINS, np.float64), "sum")
        self.add_state("sums", np.zeros(2, np.float64), "sum")  # [NLL, Brier] summed over pixels
        self.add_state("correct_hist", np.zeros(DETECTION_BINS, np.int64), "sum")
        self.add_state("wrong_hist", np.zeros(DETECTION_BINS, np.int64), "sum")

    def update(self, probs: torch.Tensor, label) -> None:
        """``probs``: (K, H, W) probabilities of one image; ``label``: (H, W) class ids."""
        self._check_open()
        label = torch.as_tensor(label).reshape(-1).long().to(probs.device)
        probs = probs.reshape(probs.shape[0], -1)
        keep = label != self.ignore_index
        label, probs = label[keep], probs[:, keep].float()
        confidence, pred = probs.max(0)
        correct = pred == label
        p_true = probs.gather(0, label[None])[0]
        nll = -p_true.double().clamp_min(PROBABILITY_FLOOR).log().sum()
        brier = (probs.double().square().sum(0) - 2 * p_true.double() + 1).sum()
        ece_bin = (confidence * ECE_BINS).long().clamp_(0, ECE_BINS - 1)
        self.bin_pixels += torch.bincount(ece_bin, minlength=ECE_BINS).cpu().numpy()
        self.bin_correct += torch.bincount(ece_bin[correct], minlength=ECE_BINS).cpu().numpy()
        self.bin_confidence += torch.bincount(ece_bin, confidence.double(), minlength=ECE_BINS).cpu().numpy()
        self.sums += np.array([float(nll), float(brier)])
        det_bin = detection_bin(confidence)
        self.correct_hist += torch.bincount(det_bin[correct], minlength=DETECTION_BINS).cpu().numpy()
        self.wrong_hist += torch.bincount(det_bin[~correct], minlength=DETECTION_BINS).cpu().numpy()

    def compute(self) -> dict:
        pixels = int(self.bin_pixels.sum())
        if not pixels:
            return {"pixels": 0}
        with np.errstate(invalid="ignore", divide="ignore"):
            accuracy = self.bin_correct / self.bin_pixels
            confidence = self.bin_confidence / self.bin_pixels
        ece = float(np.nansum(self.bin_pixels * np.abs(accuracy - confidence)) / pixels)
        return {"pixels": pixels, "ECE": ece * 100, "NLL": float(self.sums[0] / pixels),
                "Brier": float(self.sums[1] / pixels),
                **detection_scores(self.correct_hist, self.wrong_hist),
                "reliability": {"bins": ECE_BINS, "pixels": self.bin_pixels.tolist(),
                                "accuracy": _nan_to_none(accuracy * 100), "confidence": _nan_to_none(confidence * 100)}}


def detection_scores(correct_hist: np.ndarray, wrong_hist: np.ndarray) -> dict:
    """AUROC, AUPR-Error, AUPR-Success, FPR@95%TPR (in %) from confidence histograms of the
    correct and the wrong pixels (bins in increasing confidence)."""
    n_correct, n_wrong = int(correct_hist.sum()), int(wrong_hist.sum())
    if not n_correct or not n_wrong:  # nothing to separate
        return {"AUROC": None, "AUPR_error": None, "AUPR_success": None, "FPR95": None}
    # Thresholds at bin edges from the top: predict "correct" for confidence >= the edge.
    tp = np.concatenate([[0], np.cumsum(correct_hist[::-1])])
    fp = np.concatenate([[0], np.cumsum(wrong_hist[::-1])])
    tpr, fpr = tp / n_correct, fp / n_wrong
    auroc = float(np.trapezoid(tpr, fpr))
    fpr95 = float(fpr[np.searchsorted(tpr, 0.95)])  # first threshold reaching 95 % TPR, as roc_curve's
    return {"AUROC": auroc * 100, "AUPR_error": _average_precision(wrong_hist, correct_hist) * 100,
            "AUPR_success": _average_precision(correct_hist[::-1], wrong_hist[::-1]) * 100, "FPR95": fpr95 * 100,
            "detection_bins": DETECTION_BINS}


def _average_precision(positives: np.ndarray, negatives: np.ndarray) -> float:
    """scikit-learn's average precision, sum over thresholds of (recall step) x precision,
    from histograms whose bins run from the highest score to the lowest."""
    tp, fp = np.cumsum(positives), np.cumsum(negatives)
    seen = (positives + negatives) > 0
    return float(np.sum(positives[seen] / tp[-1] * tp[seen] / (tp[seen] + fp[seen])))


def _nan_to_none(values: np.ndarray) -> list:
    return [None if np.isnan(v) else float(v) for v in values]
