"""Test-time protocols as plain functions: resize, whole image or sliding window,
multi-scale and flip. Models only map a normalised batch to logits; everything that
turns an image into a prediction at its original resolution is here.

Conventions (those of mmsegmentation 0.x, which produced the papers' numbers):

- the image is first resized per the dataset's test scale (keep ratio, cv2 bilinear on
  the uint8 image), optionally to sides that are multiples of ``size_divisor``;
- ``slide`` averages raw logits over overlapping windows with a count map; windows are
  laid on a grid of ``max(H - window + stride - 1, 0) // stride + 1`` positions per axis,
  the last one shifted back to end flush with the border;
- multi-scale ratios multiply the test scale (mmseg 0.x ``MultiScaleFlipAug``: scale
  (2048r, 512r), then the keep-ratio resize), or the image size when there is none; each
  view's logits are flipped back, resized to the original image size, turned into softmax
  probabilities and averaged (mmseg ``aug_test``, Segmenter ``inference``);
- a single view returns logits (its argmax is the prediction);
- a view and its flip go through the model together, and windows are batched across
  views, flips and scales, ``batch_size`` crops of one size per forward pass.

Resizing the image for each scale (``resize_views``) needs no model, so data-loading
workers can do it (``engine.evaluate``); ``predict`` takes the views it gets.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Iterable, Iterator

import cv2
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass(frozen=True)
class Protocol:
    mode: str = "whole"  # "whole" or "slide"
    window: int | None = None  # slide window side
    stride: int | None = None  # slide stride
    scales: tuple[float, ...] = (1.0,)
    flip: bool = False
    test_scale: tuple[int, int] | None = None  # (long, short) keep-ratio resize before predicting
    size_divisor: int | None = None  # round resized sides up to a multiple of this
    min_short_side: int | None = None  # upscale so the short side is at least this (Segmenter)
    batch_size: int = 8  # windows (or flipped views) per forward pass
    source: str = ""  # where these settings come from (paper, official config), for records

    def __post_init__(self):
        if self.mode not in ("whole", "slide"):
            raise ValueError(f"protocol mode must be 'whole' or 'slide', got {self.mode!r}")
        if self.mode == "slide" and not (self.window and self.stride):
            raise ValueError("the slide protocol needs a window and a stride")

    @property
    def is_multiview(self) -> bool:
        return len(self.scales) > 1 or self.flip


def rescale_size(height: int, width: int, scale: tuple[int, int]) -> tuple[int, int]:
    """mmseg's keep-ratio rescale: fit the long side in scale[0] and the short in scale[1]."""
    long_edge, short_edge = max(scale), min(scale)
    factor = min(long_edge / max(height, width), short_edge / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


def view_size(height: int, width: int, protocol: Protocol, ratio: float = 1.0) -> tuple[int, int]:
    """The (height, width) a view is predicted at."""
    if protocol.test_scale is not None:
        long_side, short_side = protocol.test_scale
        height, width = rescale_size(height, width, (int(long_side * ratio), int(short_side * ratio)))
    else:
        height, width = int(height * ratio + 0.5), int(width * ratio + 0.5)
    if protocol.min_short_side and min(height, width) < protocol.min_short_side:
        factor = protocol.min_short_side / min(height, width)
        height, width = int(height * factor), int(width * factor)
    if protocol.size_divisor:
        d = protocol.size_divisor
        height, width = -(-height // d) * d, -(-width // d) * d
    return height, width


def normalize(image: np.ndarray, mean, std, device) -> torch.Tensor:
    """uint8 (H, W, 3) RGB -> float (1, 3, H, W), (x - mean) / std on the 0-255 scale."""
    x = torch.from_numpy(np.ascontiguousarray(image)).to(device).permute(2, 0, 1)[None].float()
    mean = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(std, device=device).view(1, 3, 1, 1)
    return x.sub_(mean).div_(std)


def window_starts(size: int, window: int, stride: int) -> list[int]:
    count = max(size - window + stride - 1, 0) // stride + 1
    return [max(min(i * stride + window, size) - window, 0) for i in range(count)]


def predict_whole(model, x: torch.Tensor) -> torch.Tensor:
    """Logits of a (B, 3, H, W) batch at (H, W)."""
    logits = model(x)
    if logits.shape[2:] != x.shape[2:]:
        logits = F.interpolate(logits, size=x.shape[2:], mode="bilinear", align_corners=False)
    return logits


def slide_logits(model, views: Iterable[torch.Tensor], window: int, stride: int, num_classes: int,
                 batch_size: int = 8) -> Iterator[torch.Tensor]:
    """Logits of each view (a (B, 3, H, W) batch; views may differ in size), in order, each
    pixel the average of the logits of the windows covering it (a count map).

    Windows of consecutive views (images of a batch, flips, scales) share forward passes
    of up to ``batch_size`` crops of one size. Views are read as they are needed and a
    view's logits are yielded as soon as its last window is done, so only the views in
    flight are held in memory.
    """
    views, pending, queue = iter(views), deque(), deque()  # open views; crops (view, image, box) to run

    def crop_size(crop) -> tuple[int, int]:
        y0, x0, y1, x1 = crop[2]
        return y1 - y0, x1 - x0

    while True:
        while len(queue) < batch_size and (x := next(views, None)) is not None:
            height, width = x.shape[2:]
            boxes = [(y, x0, min(y + window, height), min(x0 + window, width))
                     for y in window_starts(height, window, stride) for x0 in window_starts(width, window, stride)]
            count = x.new_zeros((1, 1, height, width))
            for y0, x0, y1, x1 in boxes:
                count[..., y0:y1, x0:x1] += 1
            view = {"x": x, "logits": None, "count": count, "windows": len(boxes), "left": len(boxes) * len(x)}
            pending.append(view)
            queue.extend((view, i, box) for box in boxes for i in range(len(x)))
        if not queue:
            return
        chunk = [queue.popleft()]
        while queue and len(chunk) < batch_size and crop_size(queue[0]) == crop_size(chunk[0]):
            chunk.append(queue.popleft())
        out = predict_whole(model, torch.cat([v["x"][i:i + 1, :, y0:y1, x0:x1] for v, i, (y0, x0, y1, x1) in chunk]))
        for (view, i, (y0, x0, y1, x1)), crop_logits in zip(chunk, out):
            if view["logits"] is None:  # in the model's memory layout: adding crops needs no transposition
                layout = torch.channels_last if out.is_contiguous(memory_format=torch.channels_last) \
                    else torch.contiguous_format
                view["logits"] = torch.empty((len(view["x"]), num_classes, *view["x"].shape[2:]), dtype=out.dtype,
                                             device=out.device, memory_format=layout).zero_()
            view["logits"][i, :, y0:y1, x0:x1] += crop_logits
            view["left"] -= 1
        while pending and pending[0]["left"] == 0:
            view = pending.popleft()
            yield view["logits"] if view["windows"] == 1 else view["logits"] / view["count"]


def predict_slide(model, x: torch.Tensor, window: int, stride: int, num_classes: int,
                  batch_size: int = 8) -> torch.Tensor:
    """Logits of a (B, 3, H, W) batch by overlapping windows, averaged with a count map.
    Windows of all B images are batched together, ``batch_size`` per forward pass."""
    return next(slide_logits(model, [x], window, stride, num_classes, batch_size))


def resize_views(image: np.ndarray, protocol: Protocol) -> list[np.ndarray]:
    """The uint8 image resized for each of the protocol's scales (cv2 bilinear)."""
    height, width = image.shape[:2]
    views = []
    for ratio in protocol.scales:
        view_h, view_w = view_size(height, width, protocol, ratio)
        views.append(image if (view_h, view_w) == (height, width) else cv2.resize(
            image, (view_w, view_h), interpolation=cv2.INTER_LINEAR))
    return views


@torch.inference_mode()
def predict(model, image: np.ndarray, protocol: Protocol, num_classes: int, device="cpu",
            views: list[np.ndarray] | None = None) -> torch.Tensor:
    """(K, H, W) scores at the image's original size: logits for one view, else the mean
    of the views' softmax probabilities. ``views``: ``resize_views(image, protocol)``, if
    already made (e.g. by a data-loading worker)."""
    height, width = image.shape[:2]
    info = model.info

    def batches():  # each scale's view, with its flip
        for view in resize_views(image, protocol) if views is None else views:
            x = normalize(view, info.mean, info.std, device)
            yield torch.cat([x, x.flip(3)]) if protocol.flip else x

    if protocol.mode == "slide":
        per_view = slide_logits(model, batches(), protocol.window, protocol.stride, num_classes, protocol.batch_size)
    else:
        per_view = (whole_logits(model, x, protocol.batch_size) for x in batches())
    total = None
    for logits in per_view:
        for k, scores in enumerate(logits):  # the view, then its flip
            if k == 1:
                scores = scores.flip(2)
            if scores.shape[1:] != (height, width):
                scores = F.interpolate(scores[None], size=(height, width), mode="bilinear", align_corners=False)[0]
            if not protocol.is_multiview:
                return scores
            probs = scores.softmax(0)
            total = probs if total is None else total.add_(probs)
    return total / (len(protocol.scales) * (2 if protocol.flip else 1))


def whole_logits(model, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Logits of a (B, 3, H, W) batch of whole views, ``batch_size`` per forward pass."""
    chunks = [predict_whole(model, x[i:i + batch_size]) for i in range(0, len(x), batch_size)]
    return chunks[0] if len(chunks) == 1 else torch.cat(chunks)


class Autocast(nn.Module):
    """Runs ``model`` under mixed-precision autocast (``torch.float16`` or ``torch.bfloat16``)
    and returns float32 logits, so everything after the forward (averaging, softmax,
    metrics) stays in float32."""

    def __init__(self, model: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.model, self.dtype, self.info = model, dtype, model.info

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, dtype=self.dtype):
            return self.model(x).float()


from segbench.devices import AMP_DTYPES  # noqa: E402  (one vocabulary for every amp setting)


def inference_model(model: nn.Module, amp: str | None = None, compile: bool = False) -> nn.Module:
    """``model`` in eval mode as inference runs it: compiled with ``torch.compile`` if asked,
    under autocast (``amp``: "bf16" or "fp16") if asked. Both are off by default; records
    say which were on (``precision``), since reduced precision can change predictions."""
    if amp is not None and amp not in AMP_DTYPES:
        raise ValueError(f"amp must be one of {sorted(AMP_DTYPES)} or None, got {amp!r}")
    model = model.eval()
    if compile:
        info, model = model.info, torch.compile(model)
        model.info = info
    return Autocast(model, AMP_DTYPES[amp]) if amp else model


def precision(amp: str | None, compile: bool) -> dict:
    """How a run computed, as records state it."""
    return {"dtype": {None: "float32", "bf16": "bfloat16 autocast", "fp16": "float16 autocast"}[amp],
            "compiled": compile}
