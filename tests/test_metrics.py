"""Metric parity with the official Cityscapes evaluator and scikit-learn; per-image,
bootstrap and object-size statistics against hand-computed cases."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from layouts import save, write_cityscapes
from sklearn.metrics import confusion_matrix as sk_confusion_matrix

from segbench.data.datasets import CITYSCAPES_LUT, build_dataset
from segbench.engine.evaluate import SegmentationEvaluator, score_predictions
from segbench.metrics.confusion import ConfusionMatrix, class_counts, scores_from_matrix
from segbench.metrics.size import SizeBreakdown, label_segments
from segbench.metrics.stats import PerImageCounts, bootstrap_miou, paired_bootstrap, per_image_miou, worst_mean


def adversarial_pairs(rng: np.random.Generator, num_classes: int, ignore: int = 255):
    """(prediction, label) pairs: random maps, an all-ignore label, classes missing from the
    ground truth or from the prediction, odd sizes."""
    pairs = []
    for shape in [(17, 23), (5, 41), (32, 32)]:
        label = rng.integers(0, num_classes, shape)
        label[rng.random(shape) < 0.2] = ignore
        pairs.append((rng.integers(0, num_classes, shape), label))
    pairs.append((rng.integers(0, num_classes, (9, 9)), np.full((9, 9), ignore)))  # all ignore
    label = rng.integers(0, 3, (12, 12))  # only classes 0..2 in the ground truth
    pairs.append((rng.integers(0, num_classes, (12, 12)), label))
    pairs.append((np.zeros((7, 13), int), rng.integers(0, num_classes, (7, 13))))  # predicts one class only
    return pairs


def sklearn_iou(pairs, num_classes: int, ignore: int = 255) -> np.ndarray:
    labels = np.concatenate([l.ravel() for _, l in pairs])
    preds = np.concatenate([p.ravel() for p, _ in pairs])
    keep = labels != ignore
    matrix = sk_confusion_matrix(labels[keep], preds[keep], labels=list(range(num_classes))).astype(np.float64)
    tp = np.diag(matrix)
    with np.errstate(invalid="ignore"):
        return tp / (matrix.sum(0) + matrix.sum(1) - tp)


def test_iou_equals_sklearn_on_random_and_adversarial_maps():
    rng = np.random.default_rng(0)
    num_classes = 12  # classes 10 and 11 may be absent from both: NaN
    pairs = adversarial_pairs(rng, num_classes)
    pairs.append((np.full((4, 4), 3), np.full((4, 4), 4)))
    state = ConfusionMatrix(num_classes)
    for pred, label in pairs:
        state.update(torch.from_numpy(pred), torch.from_numpy(label))
    ours, reference = state.compute()["IoU"] / 100, sklearn_iou(pairs, num_classes)
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(reference))
    np.testing.assert_allclose(ours[~np.isnan(ours)], reference[~np.isnan(reference)], rtol=0, atol=1e-9)
    assert state.compute()["mIoU"] == pytest.approx(np.nanmean(reference) * 100, abs=1e-9)


def test_class_absent_from_both_is_left_out_and_shown():
    evaluator = SegmentationEvaluator(3, ("a", "b", "c"))
    label = np.array([[0, 0], [1, 255]], np.uint8)

    class _Sample:
        name = "x"

    sample = _Sample()
    sample.label = label
    evaluator.process(sample, torch.tensor([[0, 1], [1, 2]]))
    results = evaluator.results()
    # a: tp 1, union 2 -> 50; b: tp 1, union 2 -> 50; c: never in label or prediction (the
    # prediction 2 falls on an ignored pixel) -> absent
    assert results["IoU"]["a"] == pytest.approx(50) and results["IoU"]["b"] == pytest.approx(50)
    assert np.isnan(results["IoU"]["c"]) and results["absent_classes"] == ["c"]
    assert results["mIoU"] == pytest.approx(50)


def test_unlabelled_predictions_count_as_misses_only():
    state = ConfusionMatrix(2)
    state.update(torch.tensor([0, 255, 1, 1]), torch.tensor([0, 0, 1, 0]))
    # class 0: tp 1, label 3, predicted 1 -> IoU 1/3; class 1: tp 1, label 1, predicted 2 -> 1/2
    np.testing.assert_allclose(state.compute()["IoU"], [100 / 3, 50])
    assert state.compute()["aAcc"] == pytest.approx(50)


def _cityscapes_reference(pred_files, gt_files):
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as cs_eval

    if not hasattr(np, "in1d"):  # cityscapesscripts 2.3.0 calls np.in1d, which numpy 2.4 removed
        np.in1d = lambda a, b, invert=False: np.isin(a, b, invert=invert)
    args = cs_eval.args
    args.quiet, args.JSONOutput, args.evalInstLevelScore = True, False, False
    args.evalLabels, args.predictionPath, args.predictionWalk = [], None, None
    return cs_eval.evaluateImgLists([str(p) for p in pred_files], [str(g) for g in gt_files], args)["classScores"]


@pytest.mark.parametrize("random_images", [3, 0])
def test_iou_equals_the_official_cityscapes_evaluator(tmp_path, random_images):
    rng = np.random.default_rng(1)
    label_ids = [rng.integers(0, 34, (24, 40)) for _ in range(random_images)]
    label_ids.append(rng.choice([0, 1, 4, 9, 30], (10, 16)))  # only ignored ids: an all-ignore image
    label_ids.append(rng.choice([7, 8, 26], (16, 20)))  # few classes: most evaluated classes missing from GT
    names = write_cityscapes(tmp_path / "cs", label_ids)
    predictions = [rng.integers(0, 34, l.shape) for l in label_ids]
    predictions[-1] = rng.choice([7, 11, 0, 21], label_ids[-1].shape)  # classes missing from the prediction too
    pred_files = [save(tmp_path / "pred" / f"{n}_leftImg8bit.png", p.astype(np.uint8)) for n, p in zip(names, predictions)]
    gt_files = sorted((tmp_path / "cs" / "gtFine" / "val").glob("*/*_labelIds.png"))

    reference = _cityscapes_reference(pred_files, gt_files)
    dataset = build_dataset("cityscapes", "val", str(tmp_path / "cs"))
    for ids, folder in (("label", tmp_path / "pred"), ("train", tmp_path / "pred_train")):
        if ids == "train":  # the same predictions in train ids, void classes as 255
            for n, p in zip(names, predictions):
                save(folder / f"{n}.png", CITYSCAPES_LUT[p].astype(np.uint8))
        evaluator = SegmentationEvaluator(dataset.num_classes, dataset.classes)
        score_predictions(dataset, folder, [evaluator], ids=ids)
        ours = evaluator.results()["IoU"]
        for name in dataset.classes:
            expected = reference[name]
            if np.isnan(expected):
                assert np.isnan(ours[name]), name
            else:
                assert ours[name] / 100 == pytest.approx(expected, abs=1e-9), name
    if not random_images:  # classes in neither ground truth nor prediction: NaN in both evaluators
        assert sum(np.isnan(reference[name]) for name in dataset.classes) >= 10


def test_per_image_miou_hand_computed():
    # image 1: two GT classes, IoU 1/2 and 2/3 -> 7/12; image 2: all ignored -> none;
    # image 3: GT class 0 only, prediction adds class 1 elsewhere -> IoU of 0 = 1/2
    state = PerImageCounts(2)
    for pred, label, name in (([0, 1, 1, 1], [0, 1, 1, 0], "i1"), ([0, 1], [255, 255], "i2"), ([0, 1], [0, 0], "i3")):
        matrix = ConfusionMatrix(2).update(torch.tensor(pred), torch.tensor(label))
        state.update(matrix, name)
    per_image = per_image_miou(state.counts)
    np.testing.assert_allclose(per_image, [7 / 12, np.nan, 0.5])
    summary = state.compute()
    assert summary["images"] == 3 and summary["images_scored"] == 2
    assert summary["mIoU_mean"] == pytest.approx(100 * 13 / 24) and summary["mIoU_worst10"] == pytest.approx(50)
    assert worst_mean(np.arange(20.0)) == pytest.approx(0.5)  # lowest 2 of 20
    # the per-image counts add up to the dataset-level matrix's counts
    total = ConfusionMatrix(2)
    for pred, label in (([0, 1, 1, 1], [0, 1, 1, 0]), ([0, 1], [255, 255]), ([0, 1], [0, 0])):
        total.update(torch.tensor(pred), torch.tensor(label))
    np.testing.assert_array_equal(state.counts.sum(0), class_counts(total.matrix))


def _counts(pred, label, k=2):
    return class_counts(ConfusionMatrix(k).update(torch.tensor(pred), torch.tensor(label)))


def test_bootstrap_interval_spans_the_hand_computed_extremes():
    a = _counts([0, 0, 1, 1], [0, 0, 1, 1])  # perfect: mIoU 100
    b = _counts([0, 1, 0, 1], [0, 0, 1, 1])  # IoU 1/3 for both classes
    counts = np.stack([a, b])
    # resamples are {a, a}, {a, b}, {b, b} with probabilities 1/4, 1/2, 1/4
    both = scores_from_matrix(np.array([[3, 1], [1, 3]]))["mIoU"]  # {a, b}: IoU 3/5 for both
    assert both == pytest.approx(60)
    ci = bootstrap_miou(counts, resamples=4000, seed=0)
    assert ci["low"] == pytest.approx(100 / 3) and ci["high"] == pytest.approx(100)
    identical = bootstrap_miou(np.stack([a, a, a]), resamples=200, seed=1)
    assert identical["low"] == identical["high"] == pytest.approx(100)
    assert bootstrap_miou(counts, 300, seed=5) == bootstrap_miou(counts, 300, seed=5)  # seeded


def test_paired_bootstrap():
    good = np.stack([_counts([0, 0, 1, 1], [0, 0, 1, 1]), _counts([0, 1, 1, 1], [0, 0, 1, 1])] * 5)
    bad = np.stack([_counts([0, 1, 0, 1], [0, 0, 1, 1]), _counts([1, 1, 1, 1], [0, 0, 1, 1])] * 5)
    result = paired_bootstrap(good, bad, resamples=500)
    assert result["delta_mIoU"] > 0 and result["low"] > 0 and result["p_value"] == 0
    same = paired_bootstrap(good, good, resamples=100)
    assert same["delta_mIoU"] == 0 and same["p_value"] == 1  # A never beats itself
    with pytest.raises(ValueError, match="same images"):
        paired_bootstrap(good, bad[:3])


def test_size_breakdown_hand_computed():
    label = np.zeros((10, 10), np.uint8)  # class 0 background: one segment of 100 - 4 - 6 = 90 px
    label[0:2, 0:2] = 1  # a 4 px object of class 1
    label[5:7, 5:8] = 1  # a 6 px object of class 1 (not touching the first)
    label[9, 9] = 255
    pred = np.zeros((10, 10), np.int64)
    pred[0:2, 0:2] = 1  # the 4 px object right
    pred[5, 5:8] = 1  # half of the 6 px object
    pred[3, 3] = 1  # a false positive on background
    breakdown = SizeBreakdown(2, thresholds=(5, 50))
    breakdown.update(torch.from_numpy(pred), label, None)
    result = breakdown.compute(("bg", "obj"))
    # small (< 5 px): the 4 px object, predicted right: class 1 IoU 1
    assert result["small"]["mIoU"] == pytest.approx(100) and result["small"]["segments"] == 1
    # medium (5..49): the 6 px object, 3 px right, 3 px predicted as 0: IoU(1) = 3/6; class 0
    # is not in this bucket's ground truth -> left out
    assert result["medium"]["mIoU"] == pytest.approx(50) and result["medium"]["classes_present"] == 1
    # large: background (89 labelled px): 88 right, 1 predicted as class 1 -> IoU(0) = 88/89
    assert result["large"]["mIoU"] == pytest.approx(100 * 88 / 89)
    assert result["large"]["pixels"] == 89
    full = ConfusionMatrix(2)
    full.update(torch.from_numpy(pred), torch.from_numpy(label))
    np.testing.assert_array_equal(breakdown.matrices.sum(0), full.matrix)  # buckets partition the pixels


def test_segments_use_instances_then_8_connected_components():
    label = np.array([[1, 1, 0, 0],
                      [1, 1, 0, 0],
                      [0, 0, 1, 0],
                      [0, 0, 0, 1]], np.uint8)
    segments, areas = label_segments(label, None)
    # class 1: the 2x2 block and the diagonal pixels are one 8-connected component (6 px);
    # class 0: the right block and the lower-left block touch diagonally -> one segment
    assert areas[segments[0, 0]] == 6 and segments[0, 0] == segments[3, 3]
    instances = np.zeros_like(label, np.int32)
    instances[0:2, 0:2] = 7  # an annotated object: only the 2x2 block
    segments, areas = label_segments(label, instances)
    assert areas[segments[0, 0]] == 4 and areas[segments[2, 2]] == 2  # the rest of class 1 by components
    assert segments[0, 0] != segments[2, 2]
