"""Calibration and misclassification detection against torchmetrics and scikit-learn on the
same pixels.

Resolution: ECE / NLL / Brier are sums of float32 per-pixel values (accumulated in float64),
equal to the references to 1e-5 relative (torchmetrics works in float32 too). The detection scores come from 8000-bin
confidence histograms (bins equal in -log10(1 - confidence), ~0.0012 wide at confidence
0.5, ~2.3e-6 at 0.999): AUROC agrees within half the share of (correct, wrong) pixel pairs
sharing a bin, computed here from the data; FPR at 95 % TPR within the share of wrong pixels
in the threshold's bin; average precision to 1e-3.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from segbench.metrics.calibration import Calibration, detection_bin

torchmetrics = pytest.importorskip("torchmetrics")
metrics = pytest.importorskip("sklearn.metrics")

IGNORE = 255


def _images(seed: int, count: int = 3, k: int = 5, h: int = 24, w: int = 32):
    """Probabilities peaked towards the label at random strengths (a miscalibrated model)."""
    gen = torch.Generator().manual_seed(seed)
    for _ in range(count):
        label = torch.randint(0, k, (h, w), generator=gen)
        logits = torch.randn(k, h, w, generator=gen) * 2
        logits.scatter_add_(0, label[None], 3 * torch.rand(1, h, w, generator=gen))
        label[torch.rand(h, w, generator=gen) < 0.1] = IGNORE
        yield logits.softmax(0), label


def _pixels(images):
    probs = torch.cat([p.reshape(p.shape[0], -1).T for p, _ in images])
    labels = torch.cat([lab.reshape(-1) for _, lab in images])
    keep = labels != IGNORE
    return probs[keep], labels[keep]


def test_against_torchmetrics_and_sklearn():
    images = list(_images(0))
    state = Calibration(5)
    for probs, label in images:
        state.update_probabilities(probs, label)
    out = state.compute()
    probs, labels = _pixels(images)
    assert out["pixels"] == len(labels)

    ece = torchmetrics.classification.MulticlassCalibrationError(num_classes=5, n_bins=15, norm="l1")
    assert out["ECE"] / 100 == pytest.approx(float(ece(probs, labels)), rel=1e-5)
    nll = torch.nn.functional.nll_loss(probs.double().log(), labels)
    assert out["NLL"] == pytest.approx(float(nll), rel=1e-5)
    brier = ((probs.double() - torch.nn.functional.one_hot(labels, 5)) ** 2).sum(1).mean()
    assert out["Brier"] == pytest.approx(float(brier), rel=1e-5)

    confidence, pred = probs.max(1)
    correct = (pred == labels).numpy()
    confidence = confidence.numpy().astype(np.float64)
    assert 0.2 < correct.mean() < 0.9  # both kinds of pixels, plenty of each

    bins = detection_bin(torch.from_numpy(confidence)).numpy()
    shared = sum(int((bins[correct] == b).sum()) * int((bins[~correct] == b).sum()) for b in np.unique(bins))
    auroc_bound = 0.5 * shared / (correct.sum() * (~correct).sum())
    assert abs(out["AUROC"] / 100 - metrics.roc_auc_score(correct, confidence)) <= auroc_bound + 1e-12
    assert out["AUPR_success"] / 100 == pytest.approx(metrics.average_precision_score(correct, confidence), abs=1e-3)
    assert out["AUPR_error"] / 100 == pytest.approx(metrics.average_precision_score(~correct, -confidence), abs=1e-3)

    fpr, tpr, thresholds = metrics.roc_curve(correct, confidence)
    i = int(np.searchsorted(tpr, 0.95))
    threshold_bin = detection_bin(torch.tensor([thresholds[i]], dtype=torch.float64)).item()
    fpr_bound = ((bins == threshold_bin) & ~correct).sum() / (~correct).sum()
    assert abs(out["FPR95"] / 100 - fpr[i]) <= fpr_bound + 1e-12


def test_histograms_are_fixed_size_and_shards_sum():
    images = list(_images(1, count=4))
    whole, first, second = Calibration(5), Calibration(5), Calibration(5)
    for i, (probs, label) in enumerate(images):
        whole.update_probabilities(probs, label)
        (first if i % 2 == 0 else second).update_probabilities(probs, label)
    for name in ("bin_pixels", "bin_correct", "correct_hist", "wrong_hist"):
        np.testing.assert_array_equal(getattr(first, name) + getattr(second, name), getattr(whole, name))
        assert getattr(whole, name).shape == getattr(Calibration(5), name).shape


def test_perfect_and_reliability_data():
    label = torch.tensor([[0, 1], [1, IGNORE]])
    probs = torch.nn.functional.one_hot(label.clamp(max=1), 2).permute(2, 0, 1).float()
    state = Calibration(2)
    state.update_probabilities(probs, label)
    out = state.compute()
    assert out["ECE"] == pytest.approx(0) and out["Brier"] == pytest.approx(0) and out["NLL"] == pytest.approx(0)
    assert out["AUROC"] is None  # no wrong pixel: nothing to separate
    assert out["reliability"]["pixels"][-1] == 3 and out["reliability"]["accuracy"][-1] == 100
    assert out["reliability"]["accuracy"][0] is None  # an empty bin


def test_detection_bins_increase_with_confidence():
    confidence = torch.tensor([0.0, 0.2, 0.5, 0.9, 0.99, 0.999999, 1.0], dtype=torch.float64)
    bins = detection_bin(confidence)
    assert bins.tolist() == sorted(bins.tolist()) and len(set(bins.tolist())) == len(bins)
    assert bins[-1] == 7999 and bins[0] == 0


def test_logits_path_equals_the_softmax_path():
    """Single views hand logits: the statistics come from them without forming the softmax."""
    gen = torch.Generator().manual_seed(3)
    logits, label = torch.randn(5, 20, 30, generator=gen) * 4, torch.randint(0, 5, (20, 30), generator=gen)
    label[:2] = IGNORE
    from_logits, from_probs = Calibration(5), Calibration(5)
    from_logits.update_logits(logits, label)
    from_probs.update_probabilities(logits.softmax(0), label)
    a, b = from_logits.compute(), from_probs.compute()
    for key in ("ECE", "NLL", "Brier", "AUROC", "AUPR_error", "AUPR_success", "FPR95"):
        assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), key
    assert a["pixels"] == b["pixels"] == 540
