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
    """Histogram bin (0 .. DETECTION_BINS - 1, int32) of each confidence, increasing with it."""
    s = (1 - confidence).clamp_min_(10.0 ** -DETECTION_DECADES).log10_().mul_(-DETECTION_BINS / DETECTION_DECADES)
    return s.to(torch.int32).clamp_(0, DETECTION_BINS - 1)


def _pair_histogram(bins: torch.Tensor, correct: torch.Tensor, ignored: torch.Tensor, n: int) -> np.ndarray:
    """(n, 2) int64 [wrong, correct] pixel counts per bin, ignored pixels left out."""
    code = bins.mul(2).add_(correct).masked_fill_(ignored, 2 * n)
    return torch.bincount(code, minlength=2 * n + 1)[:2 * n].reshape(n, 2).cpu().numpy()


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

    def update_probabilities(self, probs: torch.Tensor, label, pred=None) -> None:
        """Add one image: ``probs`` (K, H, W) probabilities, ``label`` (H, W) class ids,
        ``pred`` (H, W) its prediction (default: the argmax of ``probs``)."""
        probs = probs.reshape(probs.shape[0], -1).contiguous()  # rows in one block (predict's may be channels-last)
        p_true = probs.gather(0, self._label_ids(label, probs.device)[None])[0]
        self._add(probs.amax(0), p_true.clamp_min(PROBABILITY_FLOOR).log(), _sum_of_squares(probs),
                  probs.argmax(0) if pred is None else pred, label)

    def update_logits(self, logits: torch.Tensor, label, pred=None) -> None:
        """As ``update_probabilities`` from logits, through their softmax without forming it:
        per pixel, Z = sum_k exp(l_k - max l) gives the confidence 1 / Z, the log-probability of
        the label (l_y - max l) - ln Z, and sum_k p_k^2 = sum_k exp(2 (l_k - max l)) / Z^2."""
        logits = logits.reshape(logits.shape[0], -1).contiguous()  # rows in one block (predict's may be channels-last)
        top = logits.amax(0)
        total, squares, e = torch.zeros_like(top), torch.zeros_like(top), torch.empty_like(top)
        for row in logits:  # one class at a time, in one buffer: no (K, N) temporary
            torch.sub(row, top, out=e).exp_()
            total += e
            squares.addcmul_(e, e)
        log_true = logits.gather(0, self._label_ids(label, logits.device)[None])[0] - top - total.log()
        self._add(total.reciprocal(), log_true.clamp_min(float(np.log(PROBABILITY_FLOOR))), squares / total.square(),
                  logits.argmax(0) if pred is None else pred, label)

    def _label_ids(self, label, device) -> torch.Tensor:
        """Label ids as an index (ignored pixels read class 0; ``_add`` drops them)."""
        label = torch.as_tensor(label).reshape(-1).long().to(device)
        return torch.where(label == self.ignore_index, 0, label)

    def _add(self, confidence, log_true, sum_squares, pred, label) -> None:
        """Per-pixel confidence, log p[label], sum_k p_k^2 and prediction of one image.
        Ignored pixels are not compacted away (a copy of every array) but sent to an extra
        histogram slot that is dropped, and weighted 0 in the sums; bins are int32, computed
        in place (this runs on every pixel of every image)."""
        self._check_open()
        label = torch.as_tensor(label).reshape(-1).to(confidence.device)
        ignored = label == self.ignore_index
        correct = (torch.as_tensor(pred).reshape(-1).to(confidence.device) == label).masked_fill_(ignored, False)
        nll = -log_true.masked_fill(ignored, 0).sum(dtype=torch.float64)
        brier = log_true.exp().mul_(-2).add_(sum_squares).add_(1).masked_fill_(ignored, 0).sum(dtype=torch.float64)
        self.sums += np.array([float(nll), float(brier)])
        ece_bin = (confidence * ECE_BINS).to(torch.int32).clamp_(0, ECE_BINS - 1).masked_fill_(ignored, ECE_BINS)
        self.bin_confidence += torch.bincount(ece_bin, confidence.double(), minlength=ECE_BINS + 1)[:ECE_BINS].cpu().numpy()
        per_bin = _pair_histogram(ece_bin, correct, ignored, ECE_BINS)
        self.bin_pixels += per_bin.sum(1)
        self.bin_correct += per_bin[:, 1]
        per_bin = _pair_histogram(detection_bin(confidence), correct, ignored, DETECTION_BINS)
        self.wrong_hist += per_bin[:, 0]
        self.correct_hist += per_bin[:, 1]

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


def _sum_of_squares(probs: torch.Tensor) -> torch.Tensor:
    """(N,) sum over the K rows of probs^2, one row at a time (no (K, N) temporary)."""
    out = probs[0] * probs[0]
    for row in probs[1:]:
        out.addcmul_(row, row)
    return out


def _nan_to_none(values: np.ndarray) -> list:
    return [None if np.isnan(v) else float(v) for v in values]
