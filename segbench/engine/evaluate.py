"""The evaluation loop: one plain pass over a dataset, feeding each prediction to a
list of evaluators (metric state objects). Predictions come from a model (``evaluate``,
model time measured apart from data loading and metric updates) or from a folder of
PNGs written by anything else (``score_predictions``); both go through the same loop and
the same evaluators.

Each model family's protocol follows its paper's official evaluation on each dataset
(``engine.protocols.paper_protocol``).

With ``workers > 0`` the images are read, decoded (or corrupted, or generated) and resized
for the protocol's scales in DataLoader worker processes, ahead of the model: the same
samples in the same order, so the same results, with reading overlapping compute.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from segbench import dist
from segbench.data.datasets import (IGNORE_INDEX, DatasetError, Sample, SegDataset, identity_lut, map_ids,
                                    opencv_single_threaded, read_id_map)
from segbench.devices import synchronize
from segbench.engine.inference import Protocol, inference_model, precision, predict, resize_views
from segbench.metrics.boundary import DILATION_RATIO, BoundaryIoU
from segbench.metrics.calibration import Calibration
from segbench.metrics.confusion import ConfusionMatrix
from segbench.metrics.size import SizeBreakdown
from segbench.metrics.stats import PerImageCounts, bootstrap_miou


def device_batch_size(model, protocol: Protocol, device, amp: str | None = None, limit: int = 32) -> int:
    """Crops per forward pass that fill ``device``: on a GPU the largest power of two up to
    ``limit`` whose forward of sliding windows fits in memory (windows of all scales and
    flips share passes, so large batches fill up); the protocol's own elsewhere (whole
    images batch only a view with its flip, and a CPU gains nothing from larger batches)."""
    from segbench.profiling import largest_batch

    device = torch.device(device)
    if device.type != "cuda" or protocol.mode != "slide":
        return protocol.batch_size
    return largest_batch(model.eval(), protocol.window, protocol.window, device, amp is not None, limit=limit)[0]


@dataclass(frozen=True)
class Scores:
    """What the protocol computed for one image, for evaluators that need more than the
    prediction: (K, H, W) logits of a single view, or the mean softmax probabilities of
    ``views`` views (scales x flips, ``engine.inference.predict``)."""

    values: torch.Tensor
    views: int

    @property
    def are_logits(self) -> bool:
        return self.views == 1

    @property
    def description(self) -> str:
        return ("softmax of the single view's logits" if self.are_logits
                else f"merged: mean softmax of {self.views} views (scales x flips)")


class SegmentationEvaluator:
    """Dataset-level confusion matrix -> mIoU, mAcc, aAcc, fwIoU, per-class IoU; per-image
    counts -> per-image mIoU (mean, worst decile) and a bootstrap interval of mIoU."""

    name = "segmentation"

    def __init__(self, num_classes: int, class_names: tuple[str, ...], bootstrap: int = 0, seed: int = 0):
        self.class_names = class_names
        self.bootstrap, self.seed = bootstrap, seed
        self.confusion = ConfusionMatrix(num_classes)
        self.per_image = PerImageCounts(num_classes)

    def process(self, sample: Sample, pred: torch.Tensor, scores: Scores | None = None) -> None:
        counts = self.confusion.update(pred, torch.from_numpy(sample.label))
        self.per_image.update(counts, sample.name)

    def synchronize(self) -> None:
        self.confusion.synchronize()
        self.per_image.synchronize()

    def results(self) -> dict:
        scores = self.confusion.compute()
        absent = [c for c, iou in zip(self.class_names, scores["IoU"]) if np.isnan(iou)]
        out = {
            "mIoU": scores["mIoU"], "mAcc": scores["mAcc"], "aAcc": scores["aAcc"],
            "fwIoU": scores["fwIoU"], "mDice": scores["mDice"],
            "IoU": dict(zip(self.class_names, scores["IoU"])),
            "Acc": dict(zip(self.class_names, scores["Acc"])),
            "absent_classes": absent,  # in neither ground truth nor prediction: IoU undefined, left out of mIoU
            "per_image": self.per_image.compute(),
        }
        if self.bootstrap and self.per_image.names:
            out["mIoU_ci"] = bootstrap_miou(self.per_image.counts, self.bootstrap, self.seed)
        return out


class SizeEvaluator:
    """mIoU over the pixels of small / medium / large objects (see ``segbench.metrics.size``)."""

    name = "size"

    def __init__(self, num_classes: int, class_names: tuple[str, ...], thresholds: tuple[int, int]):
        self.class_names = class_names
        self.breakdown = SizeBreakdown(num_classes, thresholds)

    def process(self, sample: Sample, pred: torch.Tensor, scores: Scores | None = None) -> None:
        self.breakdown.update(pred, sample.label, sample.instances)

    def synchronize(self) -> None:
        self.breakdown.synchronize()

    def results(self) -> dict:
        return {"size": self.breakdown.compute(self.class_names)}


class BoundaryEvaluator:
    """Boundary IoU per class, mBIoU and min(IoU, BIoU) (see ``segbench.metrics.boundary``);
    the region IoU comes from ``confusion``, the segmentation evaluator's matrix."""

    name = "boundary"

    def __init__(self, class_names: tuple[str, ...], confusion: ConfusionMatrix,
                 dilation_ratio: float = DILATION_RATIO):
        self.class_names, self.confusion = class_names, confusion
        self.state = BoundaryIoU(len(class_names), dilation_ratio)

    def process(self, sample: Sample, pred: torch.Tensor, scores: Scores | None = None) -> None:
        self.state.update(np.asarray(pred), sample.label)

    def synchronize(self) -> None:
        self.state.synchronize()

    def results(self) -> dict:
        return {"boundary": self.state.compute(self.class_names, self.confusion.compute()["IoU"])}


class CalibrationEvaluator:
    """ECE, NLL, Brier and misclassification detection from the protocol's probabilities
    (see ``segbench.metrics.calibration``). Predictions without probabilities (PNG files)
    leave it empty; its result is then None."""

    name = "calibration"

    def __init__(self, num_classes: int):
        self.state = Calibration(num_classes)
        self.scored: str | None = None  # which probabilities (single view or merged)

    def process(self, sample: Sample, pred: torch.Tensor, scores: Scores | None = None) -> None:
        if scores is not None:
            update = self.state.update_logits if scores.are_logits else self.state.update_probabilities
            update(scores.values, torch.from_numpy(sample.label), pred)
            self.scored = scores.description

    def synchronize(self) -> None:
        self.state.synchronize()

    def results(self) -> dict:
        if self.scored is None:
            return {"calibration": None}
        return {"calibration": {"probabilities": self.scored, **self.state.compute()}}


def standard_evaluators(dataset: SegDataset, size_breakdown: bool = True, bootstrap: int = 1000,
                        seed: int = 0, boundary: bool = True, calibration: bool = True,
                        boundary_dilation: float = DILATION_RATIO) -> list:
    """The evaluators a record carries: dataset-level and per-image metrics, CIs, sizes,
    boundary IoU, calibration and misclassification detection."""
    segmentation = SegmentationEvaluator(dataset.num_classes, dataset.classes, bootstrap, seed)
    evaluators = [segmentation]
    if size_breakdown:
        evaluators.append(SizeEvaluator(dataset.num_classes, dataset.classes, dataset.size_buckets))
    if boundary:
        evaluators.append(BoundaryEvaluator(dataset.classes, segmentation.confusion, boundary_dilation))
    if calibration:
        evaluators.append(CalibrationEvaluator(dataset.num_classes))
    return evaluators


def collect_results(evaluators: list) -> dict:
    results = {}
    for evaluator in evaluators:
        results.update(evaluator.results())
    return results


WARMUP_IMAGES = 5  # untimed first images (detectron2's inference_on_dataset: min(5, N - 1))


@dataclass
class EvalTiming:
    images: int
    total_seconds: float
    model_seconds: float  # predict() only (forward passes, windows, scales, merging), after the warm-up
    workers: int = 0  # data-loading worker processes (0: read in the loop)
    dtype: str = "float32"  # or "bfloat16 autocast" / "float16 autocast"
    compiled: bool = False  # torch.compile
    warmup_images: int = 0  # first images left out of model_seconds (allocator, cudnn autotune, compilation)
    warmup_seconds: float = 0.0  # their predict() time
    compile_seconds: float | None = None  # compiled: the first image's predict() time, compilation included
    non_finite: int = 0  # images whose logits held NaN or inf

    def as_dict(self) -> dict:
        timed = self.images - self.warmup_images
        return {"images": self.images, "total_seconds": self.total_seconds,
                "model_seconds": self.model_seconds,
                "images_per_second": timed / self.model_seconds if self.model_seconds else None,
                "warmup_images": self.warmup_images, "warmup_seconds": self.warmup_seconds,
                "compile_seconds": self.compile_seconds,
                "workers": self.workers, "dtype": self.dtype, "compiled": self.compiled}


class _Prepared(torch.utils.data.Dataset):
    """``(sample, prepare(sample))`` by index: what a data-loading worker hands over."""

    def __init__(self, dataset: SegDataset, prepare: Callable | None):
        self.dataset, self.prepare = dataset, prepare

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        sample = self.dataset[index]
        return sample, self.prepare(sample) if self.prepare else None


def _as_is(item):
    return item


def load_samples(dataset: SegDataset, indices, workers: int = 0,
                 prepare: Callable | None = None) -> Iterator[tuple[Sample, object]]:
    """``(sample, prepare(sample))`` for each index, in order: read here one at a time, or
    by ``workers`` DataLoader worker processes ahead of the consumer."""
    items = _Prepared(dataset, prepare)
    if workers <= 0:
        return (items[index] for index in indices)
    opencv_single_threaded()
    return iter(torch.utils.data.DataLoader(items, batch_size=None, sampler=list(indices), num_workers=workers,
                                            collate_fn=_as_is))


def run_evaluators(dataset: SegDataset, predict_one, evaluators: list, max_images: int | None = None,
                   progress=None, workers: int = 0, prepare: Callable | None = None) -> int:
    """Feed ``predict_one(sample, prepare(sample))`` -> (prediction, ``Scores`` or None) of
    each image to the evaluators; returns the image count. ``workers``, ``prepare``: see ``load_samples``.

    Under torch.distributed the images are split over ranks (rank r takes r, r + W, ...)
    and each evaluator is synchronised with one collective per state.
    """
    count = len(dataset) if max_images is None else min(max_images, len(dataset))
    for sample, prepared in load_samples(dataset, dist.shard(count), workers, prepare):
        pred, scores = predict_one(sample, prepared)
        for evaluator in evaluators:
            evaluator.process(sample, pred, scores)
        if progress is not None:
            progress()
    for evaluator in evaluators:
        evaluator.synchronize()
    return count


def _resized_views(sample: Sample, protocol: Protocol) -> list[np.ndarray]:
    return resize_views(sample.image, protocol)


def all_finite(values: torch.Tensor) -> bool:
    """Whether no value is NaN or infinite, in one reduction (NaN propagates through min and
    max), over the dimensions in memory order: ``torch.isfinite(values).all()`` writes a
    mask the size of the scores, and a reduction across a channels-last layout's strides
    is as slow; either took as long as SegFormer-B0's forward pass on 512 x 768 logits."""
    in_memory_order = values.permute(sorted(range(values.dim()), key=lambda d: -values.stride(d)))
    low, high = torch.aminmax(in_memory_order)
    return bool(torch.isfinite(low) & torch.isfinite(high))


def evaluate(model, dataset: SegDataset, protocol: Protocol, evaluators: list, device="cpu",
             max_images: int | None = None, progress=None, workers: int = 0, amp: str | None = None,
             compile: bool = False) -> EvalTiming:
    """Run ``model`` over ``dataset`` with ``protocol``; evaluators accumulate the metrics.

    ``workers``: processes that read and resize images ahead of the model (0: none).
    ``amp`` ("bf16" / "fp16") and ``compile`` (torch.compile) are off by default; the
    timing says whether they were on, since reduced precision can change predictions.
    """
    net = inference_model(model, amp, compile)
    seconds: list[float] = []  # predict() time of each image of this process
    non_finite = 0

    def predict_one(sample: Sample, views: list[np.ndarray]) -> tuple[torch.Tensor, Scores]:
        nonlocal non_finite
        synchronize(device)
        t0 = time.perf_counter()
        scores = predict(net, sample.image, protocol, dataset.num_classes, device, views)
        pred = scores.argmax(0).cpu()
        synchronize(device)
        seconds.append(time.perf_counter() - t0)
        non_finite += not all_finite(scores)
        return pred, Scores(scores, len(protocol.scales) * (2 if protocol.flip else 1))

    start = time.perf_counter()
    count = run_evaluators(dataset, predict_one, evaluators, max_images, progress, workers,
                           partial(_resized_views, protocol=protocol))
    warmup = min(WARMUP_IMAGES, max(len(seconds) - 1, 0))
    timed, warm, bad = dist.all_reduce_sum(np.array([sum(seconds[warmup:]), sum(seconds[:warmup]), non_finite],
                                                    dtype=np.float64)) / [dist.world_size(), dist.world_size(), 1]
    warmups = int(dist.all_reduce_sum(np.array([warmup]))[0])
    return EvalTiming(count, time.perf_counter() - start, float(timed), workers, **precision(amp, compile),
                      warmup_images=warmups, warmup_seconds=float(warm),
                      compile_seconds=seconds[0] if compile and seconds else None, non_finite=int(bad))


# --- predictions from anywhere ---------------------------------------------------------

PREDICTION_IDS = ("auto", "train", "label")


def prediction_files(folder: Path, dataset: SegDataset, count: int) -> list[Path]:
    """The prediction PNG of each of the first ``count`` images, found by the image's name:
    ``<name>.png`` or ``<name>_<anything>.png`` anywhere under ``folder`` (as the Cityscapes
    evaluator matches ``<city>_<seq>_<frame>*.png``)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: no such predictions folder")
    by_stem: dict[str, list[Path]] = {}
    for path in folder.rglob("*.png"):
        by_stem.setdefault(path.stem, []).append(path)
    files, missing = [], []
    for index in range(count):
        name = _sample_name(dataset, index)
        matches = by_stem.get(name) or [p for stem, paths in by_stem.items() if stem.startswith(name + "_")
                                        for p in paths]
        if len(matches) > 1:
            raise DatasetError(f"{folder}: several predictions for image {name}: "
                               f"{', '.join(str(p) for p in matches[:3])}")
        if not matches:
            missing.append(name)
        else:
            files.append(matches[0])
    if missing:
        raise DatasetError(f"{folder}: no prediction for {len(missing)} of {count} images of {dataset.name} "
                           f"(e.g. {', '.join(missing[:3])}); expected <image name>.png, e.g. {missing[0]}.png")
    return files


def _sample_name(dataset: SegDataset, index: int) -> str:
    files = dataset.files[index]
    return dataset.sample_name(files[0]) if files else dataset[index].name


def detect_prediction_ids(files: list[Path], dataset: SegDataset, folder: Path) -> tuple[str, str]:
    """Whether predictions hold training ids or the dataset's official label ids, from the
    values they use, only where the evidence is unambiguous:

    - a value invalid in one space (e.g. Cityscapes label id 26 > 18, ADE20K id 150) decides;
    - otherwise a value that is a class as a training id but "unlabelled" as a label id (ADE20K's
      0, Cityscapes' 0..6) decides for training ids: a model predicts classes;
    - values valid in both that would score differently (ADE20K-style 1..149: reduce-zero-label
      ids shift every class by one) are an error asking for ``--ids``.
    """
    train_lut, label_lut = identity_lut(dataset.num_classes), dataset.label_lut

    def fits(lut: np.ndarray, values: np.ndarray) -> bool:
        return bool(((values >= 0) & (values <= 255)).all() and (lut[np.clip(values, 0, 255)] >= 0).all())

    values = np.zeros(0, np.int64)
    for path in files:  # stop at the first file that is not in training ids: that decides
        values = np.union1d(values, np.unique(read_id_map(path)).astype(np.int64))
        if not fits(train_lut, values):
            break
    as_train, as_label = fits(train_lut, values), fits(label_lut, values)
    if as_train != as_label:
        return ("train", "values fit only training ids") if as_train else ("label", "values fit only label ids")
    if not as_train:
        bad = [v for v in values.tolist() if not (0 <= v <= 255 and (train_lut[v] >= 0 or label_lut[v] >= 0))][:5]
        raise DatasetError(f"{folder}: predictions hold values {bad}, neither training ids "
                           f"(0..{dataset.num_classes - 1}, 255 = unlabelled) nor {dataset.label_ids}")
    if (label_lut[values] == values).all():
        return "train", "values fit training ids (the label ids are the same)"
    unlabelled_as_label = [v for v in values.tolist() if v != IGNORE_INDEX and label_lut[v] == IGNORE_INDEX]
    if unlabelled_as_label:
        return "train", (f"values fit training ids and label ids alike, but {unlabelled_as_label[:3]} would be "
                         f"unlabelled as label ids, which a model does not predict: read as training ids")
    raise DatasetError(f"{folder}: cannot tell whether the predictions hold training ids (0..{dataset.num_classes - 1}) "
                       f"or {dataset.label_ids}: their values ({values.min()}..{values.max()}) are valid in both and "
                       f"score differently; pass --ids train or --ids label")


def score_predictions(dataset: SegDataset, folder: Path, evaluators: list, ids: str = "auto",
                      max_images: int | None = None, progress=None) -> dict:
    """Score a folder of prediction PNGs against ``dataset`` with ``evaluators``. Returns
    how the predictions were read ({ids, ids_note, images})."""
    if ids not in PREDICTION_IDS:
        raise ValueError(f"ids must be one of {PREDICTION_IDS}, got {ids!r}")
    count = len(dataset) if max_images is None else min(max_images, len(dataset))
    files = prediction_files(folder, dataset, count)
    note = "given"
    if ids == "auto":
        ids, note = detect_prediction_ids(files, dataset, folder)
    lut = identity_lut(dataset.num_classes) if ids == "train" else dataset.label_lut
    what = (f"training ids (0..{dataset.num_classes - 1}, 255 = unlabelled)" if ids == "train"
            else dataset.label_ids)
    path_of = {_sample_name(dataset, i): files[i] for i in range(count)}

    def load(sample: Sample, _) -> torch.Tensor:
        path = path_of[sample.name]
        pred = map_ids(read_id_map(path), lut, path, what)
        if pred.shape != sample.label.shape:
            raise DatasetError(f"{path}: prediction is {pred.shape[1]}x{pred.shape[0]} but the label of {sample.name} "
                               f"is {sample.label.shape[1]}x{sample.label.shape[0]}")
        return torch.from_numpy(pred), None  # no probabilities in a PNG

    run_evaluators(dataset, load, evaluators, max_images, progress)
    return {"ids": ids, "ids_note": note, "images": count, "unlabelled_value": IGNORE_INDEX}
