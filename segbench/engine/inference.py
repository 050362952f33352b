"""Test-time protocols as plain functions: resize, whole image or sliding window,
multi-scale and flip. Models only map a normalised batch to logits; everything that
turns an image into a prediction at its original resolution is here. Which settings each
paper uses on each dataset is ``engine.protocols``.

The view chain of one scale, each step as the official pipelines (mmseg 0.x + mmcv 1.x,
the papers' forks of it, Segmenter's own code) compute it:

1. ``test_scale`` x ratio (mmseg 0.x ``MultiScaleFlipAug``: ``(int(long r), int(short r))``;
   the image's own size x ratio when there is none), then mmcv's keep-ratio
   ``imrescale`` of the uint8 image (cv2 bilinear; ``rescale_size``). With
   ``short_side_floor`` the scale first becomes "short side = max(short, floor), long
   side free" (SETR's ``Resize``);
2. with ``size_divisor``: a second cv2 bilinear resize of that uint8 image to sides
   rounded up to the divisor (SegFormer's ``AlignedResize``);
3. normalisation as mmcv's ``imnormalize`` (float32: minus the float32 mean, times the
   float32 reciprocal of the float32 std);
4. with ``min_short_side``: the normalised float tensor resized with torch bilinear
   (align_corners False) so its short side is exactly that (Segmenter's ``resize``);
5. ``slide`` averages raw logits over overlapping windows with a count map; windows lie on
   a grid of ``max(H - window + stride - 1, 0) // stride + 1`` positions per axis, the
   last one flush with the border; ``whole`` runs the view as it is;
6. each view's logits are resized (bilinear) to the original image size, flipped back,
   turned into softmax probabilities and averaged over the views (mmseg ``aug_test``,
   Segmenter ``inference``); a single view returns logits (its argmax is the prediction).

A view and its flip go through the model together, and windows are batched across views,
flips and scales, ``batch_size`` crops of one size per forward pass. Steps 1-2 need no
model, so data-loading workers do them (``resize_views``, ``engine.evaluate``).
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

from segbench.errors import SegbenchError


@dataclass(frozen=True)
class Protocol:
    mode: str = "whole"  # "whole" or "slide"
    window: int | None = None  # slide window side
    stride: int | None = None  # slide stride
    scales: tuple[float, ...] = (1.0,)
    flip: bool = False
    test_scale: tuple[int, int] | None = None  # (long, short) keep-ratio resize before predicting
    short_side_floor: int | None = None  # SETR's Resize: short side max(scale's short, this), long side free
    size_divisor: int | None = None  # a second uint8 resize to sides rounded up to a multiple of this
    min_short_side: int | None = None  # the normalised tensor upscaled to this short side (Segmenter)
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


def rescale_size(height: int, width: int, scale: tuple[float, float]) -> tuple[int, int]:
    """mmcv's keep-ratio ``rescale_size``: one factor that fits the long side in max(scale)
    and the short side in min(scale), sides rounded half up."""
    factor = min(max(scale) / max(height, width), min(scale) / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


def short_side_scale(height: int, width: int, short: float) -> tuple[float, float]:
    """SETR's ``Resize`` scale for a short side ``short``: (short * long / short_side, short),
    in the image's orientation (float sides; ``rescale_size`` turns it into pixels)."""
    return (short * height / width, short) if height > width else (short, short * width / height)


def rescaled_size(height: int, width: int, protocol: Protocol, ratio: float = 1.0) -> tuple[int, int]:
    """Step 1: the keep-ratio rescale of the uint8 image for one ratio."""
    if protocol.test_scale is None:
        return int(height * ratio + 0.5), int(width * ratio + 0.5)
    scale = (int(protocol.test_scale[0] * ratio), int(protocol.test_scale[1] * ratio))
    if protocol.short_side_floor is not None:
        scale = short_side_scale(height, width, max(min(scale), protocol.short_side_floor))
    return rescale_size(height, width, scale)


def aligned_size(height: int, width: int, divisor: int) -> tuple[int, int]:
    """Step 2: sides rounded up to a multiple of ``divisor`` (SegFormer's ``AlignedResize``)."""
    return -(-height // divisor) * divisor, -(-width // divisor) * divisor


def window_fit_size(height: int, width: int, short: int) -> tuple[int, int]:
    """Step 4: Segmenter's ``resize``: the short side to ``short``, the long one to
    int(aspect * short) (unchanged when the short side is already at least ``short``)."""
    if min(height, width) >= short:
        return height, width
    return (short, int(width / height * short)) if height < width else (int(height / width * short), short)


def view_size(height: int, width: int, protocol: Protocol, ratio: float = 1.0) -> tuple[int, int]:
    """The (height, width) the model sees for one ratio: steps 1, 2 and 4."""
    height, width = rescaled_size(height, width, protocol, ratio)
    if protocol.size_divisor:
        height, width = aligned_size(height, width, protocol.size_divisor)
    if protocol.min_short_side:
        height, width = window_fit_size(height, width, protocol.min_short_side)
    return height, width


def _std_reciprocal(std) -> np.ndarray:
    # mmseg's Normalize keeps float32 mean / std; mmcv's imnormalize multiplies by
    # 1 / float64(std), which cv2 applies as a float32 factor
    return (1.0 / np.float32(std).astype(np.float64)).astype(np.float32)


def normalize(image: np.ndarray, mean, std, device) -> torch.Tensor:
    """uint8 (H, W, 3) RGB -> float32 (1, 3, H, W): (x - mean) * (1 / std) on the 0-255
    scale, bit for bit as mmcv's ``imnormalize`` (step 3)."""
    # torch warns on wrapping a read-only array (np.asarray of a Pillow image, as the readers
    # decode, is one); a copy of the uint8 pixels costs little next to the float32 one made next
    image = np.require(image, requirements=("C_CONTIGUOUS", "WRITEABLE"))
    x = torch.from_numpy(image).to(device).permute(2, 0, 1)[None].float()
    mean = torch.from_numpy(np.float32(mean)).to(device).view(1, 3, 1, 1)
    return x.sub_(mean).mul_(torch.from_numpy(_std_reciprocal(std)).to(device).view(1, 3, 1, 1))


def fit_window(x: torch.Tensor, short: int | None) -> torch.Tensor:
    """Step 4 on a normalised (B, 3, H, W) batch (torch bilinear, align_corners False)."""
    if not short:
        return x
    size = window_fit_size(*x.shape[2:], short)
    return x if size == tuple(x.shape[2:]) else F.interpolate(x, size=size, mode="bilinear", align_corners=False)


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
    """The uint8 image for each of the protocol's scales: steps 1 and 2 (cv2 bilinear;
    cv2 returns an unchanged copy when a size does not change)."""
    views = []
    for ratio in protocol.scales:
        view = image
        for size in _uint8_sizes(*image.shape[:2], protocol, ratio):
            if size != view.shape[:2]:
                view = cv2.resize(view, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
        views.append(view)
    return views


def _uint8_sizes(height: int, width: int, protocol: Protocol, ratio: float) -> list[tuple[int, int]]:
    sizes = [rescaled_size(height, width, protocol, ratio)]
    if min(sizes[0]) < 1:  # the official pipelines fail here too (cv2 cannot resize to nothing)
        raise SegbenchError(f"a {height}x{width} image rescaled to {protocol.test_scale} x {ratio} has no pixels left "
                            f"({sizes[0][0]}x{sizes[0][1]}): {protocol.source or 'this protocol'} cannot test it; "
                            "leave such images out of the split")
    if protocol.size_divisor:
        sizes.append(aligned_size(*sizes[0], protocol.size_divisor))
    return sizes


def model_inputs(image: np.ndarray, protocol: Protocol, mean, std, device="cpu",
                 views: list[np.ndarray] | None = None) -> Iterator[torch.Tensor]:
    """The normalised input of each scale (steps 1-4), a (1, 3, H, W) batch, or (2, 3, H, W)
    with its flip second. ``views``: ``resize_views(image, protocol)``, if already made."""
    for view in resize_views(image, protocol) if views is None else views:
        x = normalize(view, mean, std, device)
        fitted = fit_window(x, protocol.min_short_side)
        # the official pipelines flip the image before resizing it: so does step 4 here
        yield torch.cat([fitted, fit_window(x.flip(3), protocol.min_short_side)]) if protocol.flip else fitted


@torch.inference_mode()
def predict(model, image: np.ndarray, protocol: Protocol, num_classes: int, device="cpu",
            views: list[np.ndarray] | None = None) -> torch.Tensor:
    """(K, H, W) scores at the image's original size: logits for one view, else the mean
    of the views' softmax probabilities. ``views``: ``resize_views(image, protocol)``, if
    already made (e.g. by a data-loading worker)."""
    height, width = image.shape[:2]
    batches = model_inputs(image, protocol, model.info.mean, model.info.std, device, views)
    if protocol.mode == "slide":
        per_view = slide_logits(model, batches, protocol.window, protocol.stride, num_classes, protocol.batch_size)
    else:
        per_view = (whole_logits(model, x, protocol.batch_size) for x in batches)
    total = None
    for logits in per_view:
        for k in range(len(logits)):  # the view, then its flip
            # (1, K, h, w) slices, not logits[k][None]: a channels-last batch's element
            # unsqueezed has strides torch reads as neither layout, and resizes ~4x slower
            scores = logits[k:k + 1].flip(3) if k == 1 else logits[k:k + 1]
            if scores.shape[2:] != (height, width):
                scores = F.interpolate(scores, size=(height, width), mode="bilinear", align_corners=False)
            if not protocol.is_multiview:
                return scores[0]
            probs = channel_softmax(scores[0])
            total = probs if total is None else total.add_(probs)
    return total / (len(protocol.scales) * (2 if protocol.flip else 1))


def channel_softmax(scores: torch.Tensor) -> torch.Tensor:
    """Softmax over the classes of (K, H, W) scores, in their memory layout: over the
    innermost dimension when the classes are innermost (channels-last logits), where
    torch's softmax over dimension 0 runs ~4x slower."""
    if scores.stride(0) == 1:
        return scores.permute(1, 2, 0).softmax(-1).permute(2, 0, 1)
    return scores.softmax(0)


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
