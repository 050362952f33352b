"""The evaluation loop: one plain pass over a dataset, feeding each prediction to a
list of evaluators (metric state objects). Model time is measured apart from data
loading and metric updates.

Each model family's single-scale protocol follows its paper (see ``paper_protocol``);
``multi_scale`` adds ratios 0.5-1.75 and horizontal flip on top of it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np
import torch

from segbench import dist
from segbench.data.datasets import Sample, SegDataset
from segbench.engine.inference import Protocol, predict
from segbench.metrics.confusion import ConfusionMatrix
from segbench.models import ModelInfo

MS_RATIOS = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)


def paper_protocol(info: ModelInfo, dataset: SegDataset, multi_scale: bool = False) -> Protocol:
    """The single-scale (or multi-scale + flip) test protocol of the model's paper.

    - Segmenter: sliding window = training crop, stride = crop - 32 (official default),
      short side upscaled to at least the window.
    - SETR: sliding window, stride = 2/3 of the window (512/341 ADE20K, 768/512 Cityscapes).
    - SegFormer: whole image, sides resized to multiples of 32 (ADE20K protocol).
    - CNN baselines (mmseg configs): whole image.
    A model's ``info.test_mode`` / ``info.test_stride`` (e.g. from an official checkpoint's
    settings) take precedence over these defaults.
    """
    window = info.crop_size
    if info.test_mode == "slide":
        default_stride = window * 2 // 3 if info.family == "setr" else window - 32
        stride = info.test_stride or max(default_stride, 1)
        protocol = Protocol(mode="slide", window=window, stride=stride, test_scale=dataset.test_scale,
                            min_short_side=window if info.family == "segmenter" else None)
    else:
        protocol = Protocol(mode="whole", test_scale=dataset.test_scale,
                            size_divisor=32 if info.family == "segformer" else None)
    if multi_scale:
        protocol = replace(protocol, scales=MS_RATIOS, flip=True)
    return protocol


class SegmentationEvaluator:
    """Dataset-level confusion matrix -> mIoU, mAcc, aAcc, fwIoU, per-class IoU."""

    name = "segmentation"

    def __init__(self, num_classes: int, class_names: tuple[str, ...]):
        self.class_names = class_names
        self.confusion = ConfusionMatrix(num_classes)

    def process(self, sample: Sample, pred: torch.Tensor) -> None:
        self.confusion.update(pred, torch.from_numpy(sample.label))

    def synchronize(self) -> None:
        self.confusion.matrix = dist.all_reduce_sum(self.confusion.matrix)

    def results(self) -> dict:
        scores = self.confusion.compute()
        return {
            "mIoU": scores["mIoU"], "mAcc": scores["mAcc"], "aAcc": scores["aAcc"],
            "fwIoU": scores["fwIoU"], "mDice": scores["mDice"],
            "IoU": dict(zip(self.class_names, scores["IoU"])),
            "Acc": dict(zip(self.class_names, scores["Acc"])),
        }


@dataclass
class EvalTiming:
    images: int
    total_seconds: float
    model_seconds: float  # predict() only: forward passes, windows, scales, merging

    def as_dict(self) -> dict:
        return {"images": self.images, "total_seconds": self.total_seconds,
                "model_seconds": self.model_seconds,
                "images_per_second": self.images / self.model_seconds if self.model_seconds else None}


def evaluate(model, dataset: SegDataset, protocol: Protocol, evaluators: list, device="cpu",
             max_images: int | None = None, progress=None) -> EvalTiming:
    """Run ``model`` over ``dataset`` with ``protocol``; evaluators accumulate the metrics.

    Under torch.distributed the images are split over ranks (rank r takes r, r + W, ...)
    and evaluators are synchronised with one summing collective each.
    """
    model.eval()
    count = len(dataset) if max_images is None else min(max_images, len(dataset))
    indices = range(dist.rank(), count, dist.world_size())
    start, model_seconds = time.perf_counter(), 0.0
    for index in indices:
        sample = dataset[index]
        _sync(device)
        t0 = time.perf_counter()
        scores = predict(model, sample.image, protocol, dataset.num_classes, device)
        pred = scores.argmax(0).cpu()
        _sync(device)
        model_seconds += time.perf_counter() - t0
        for evaluator in evaluators:
            evaluator.process(sample, pred)
        if progress is not None:
            progress()
    for evaluator in evaluators:
        evaluator.synchronize()
    model_seconds = float(dist.all_reduce_sum(np.array([model_seconds]))[0]) / dist.world_size()
    return EvalTiming(count, time.perf_counter() - start, model_seconds)


def _sync(device) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
