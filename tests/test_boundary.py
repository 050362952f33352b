"""Boundary IoU against a brute-force per-pixel distance definition and hand-made cases."""
from __future__ import annotations

import numpy as np
import pytest

from segbench.metrics.boundary import BoundaryIoU, boundary_counts, dilation_pixels

IGNORE = 255


def brute_force_band(mask: np.ndarray, d: int) -> np.ndarray:
    """Pixels of ``mask`` with a non-mask pixel, or a pixel outside the image, at chessboard
    distance <= d: Cheng et al.'s G_d ∩ G with the image padded by background."""
    h, w = mask.shape
    band = np.zeros_like(mask, bool)
    for y in range(h):
        for x in range(w):
            if not mask[y, x]:
                continue
            for dy in range(-d, d + 1):
                for dx in range(-d, d + 1):
                    yy, xx = y + dy, x + dx
                    if not (0 <= yy < h and 0 <= xx < w) or not mask[yy, xx]:
                        band[y, x] = True
    return band


def brute_force_counts(pred, label, num_classes, d):
    labelled = label != IGNORE
    out = np.zeros((3, num_classes), np.int64)
    for c in range(num_classes):
        g = brute_force_band(label == c, d) & labelled
        p = brute_force_band(pred == c, d) & labelled
        out[:, c] = [(g & p).sum(), g.sum(), p.sum()]
    return out


def test_random_maps_match_brute_force():
    rng = np.random.default_rng(0)
    for trial in range(6):
        h, w = rng.integers(5, 17, 2)
        k = int(rng.integers(2, 5))
        # blocky maps (upsampled noise) so classes form regions, with some ignored pixels
        label = np.kron(rng.integers(0, k, (h // 2 + 1, w // 2 + 1)), np.ones((2, 2), int))[:h, :w]
        label[rng.random((h, w)) < 0.1] = IGNORE
        pred = np.where(rng.random((h, w)) < 0.2, rng.integers(0, k, (h, w)), np.where(label == IGNORE, 0, label))
        for d in (1, 2, 3):
            np.testing.assert_array_equal(boundary_counts(pred, label, k, d), brute_force_counts(pred, label, k, d),
                                          err_msg=f"trial {trial} d={d}")


def test_square_shifted_by_one_pixel():
    label = np.zeros((20, 20), int)
    label[5:15, 5:15] = 1  # a 10x10 square
    pred = np.zeros_like(label)
    pred[5:15, 6:16] = 1  # the same square one pixel to the right
    counts = boundary_counts(pred, label, 2, d=1)
    # d = 1: each square's band is its outer ring of 36 pixels; the rings share 9 pixels of
    # the top row and 9 of the bottom one, and no column (5, 14 vs 6, 15) -> BIoU 18 / 54,
    # far below the region IoU 90 / 110: the measure the paper proposes for boundary quality.
    assert counts[1, 1] == counts[2, 1] == 36
    assert counts[0, 1] == 18
    assert counts[0, 1] / (counts[1, 1] + counts[2, 1] - counts[0, 1]) == pytest.approx(1 / 3)
    wide = boundary_counts(pred, label, 2, d=3)  # a wider band: still the brute-force one
    np.testing.assert_array_equal(wide[:, 1], brute_force_counts(pred, label, 2, 3)[:, 1])


def test_thin_structure_is_all_boundary():
    label = np.zeros((12, 12), int)
    label[:, 6] = 1  # a one-pixel-wide pole
    pred = np.zeros_like(label)
    pred[:, 7] = 1  # missed by one pixel
    counts = boundary_counts(pred, label, 2, d=2)
    assert counts[1, 1] == 12 and counts[2, 1] == 12 and counts[0, 1] == 0  # BIoU of the pole: 0
    assert counts[0, 0] > 0  # background near the pole is boundary of both


def test_mask_touching_the_border_has_a_boundary_there():
    label = np.ones((8, 8), int)  # class 1 covers the image: its band is the image's frame of width d
    for d in (1, 2):
        counts = boundary_counts(label, label, 2, d)
        assert counts[1, 1] == 64 - (8 - 2 * d) ** 2 == counts[0, 1]
        assert counts[:, 0].sum() == 0


def test_ignored_pixels_are_not_counted_but_bound_classes():
    label = np.full((6, 6), 1)
    label[:, :3] = IGNORE
    counts = boundary_counts(label, label, 2, d=1)
    # class 1 (columns 3-5): its band is everything within one pixel of the ignored half or the border
    assert counts[1, 1] == brute_force_counts(label, label, 2, 1)[1, 1] == 18 - 4  # all but column 4, rows 1-4
    assert counts[:, 1].tolist() == [counts[1, 1]] * 3


def test_dilation_follows_the_official_rounding():
    assert dilation_pixels(1024, 2048) == round(0.02 * np.hypot(1024, 2048)) == 46
    assert dilation_pixels(10, 10) == 1  # at least one pixel
    assert dilation_pixels(100, 100, 0.05) == 7


def test_state_accumulates_split_level_counts_and_min_with_iou():
    rng = np.random.default_rng(1)
    state = BoundaryIoU(3)
    total = np.zeros((3, 3), np.int64)
    for _ in range(3):
        label = np.kron(rng.integers(0, 3, (5, 5)), np.ones((4, 4), int))
        pred = np.where(rng.random(label.shape) < 0.15, (label + 1) % 3, label)
        state.update(pred, label)
        total += brute_force_counts(pred, label, 3, dilation_pixels(*label.shape))
    np.testing.assert_array_equal(state.boundary, total)
    iou = np.array([90.0, 10.0, np.nan])  # the region IoU of the split, from its confusion matrix
    out = state.compute(("a", "b", "c"), iou)
    biou = total[0] / (total[1] + total[2] - total[0]) * 100
    assert out["BIoU"] == pytest.approx(dict(zip("abc", biou)))
    assert out["mBIoU"] == pytest.approx(biou.mean())
    assert out["mIoU_BIoU_min"] == pytest.approx(np.mean([min(90, biou[0]), min(10, biou[1])]))  # c: IoU undefined
    state.synchronize()
    with pytest.raises(RuntimeError):
        state.update(pred, label)


def test_wide_label_sets_take_the_uint16_path():
    rng = np.random.default_rng(2)
    label = np.kron(rng.integers(0, 300, (4, 4)), np.ones((3, 3), int))
    pred = np.where(rng.random(label.shape) < 0.2, 299 - label, label)
    np.testing.assert_array_equal(boundary_counts(pred, label, 300, 1), brute_force_counts(pred, label, 300, 1))
