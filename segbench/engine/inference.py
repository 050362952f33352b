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
  both, ``batch_size`` crops per forward pass.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
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
    return (x - mean) / std


def window_starts(size: int, window: int, stride: int) -> list[int]:
    count = max(size - window + stride - 1, 0) // stride + 1
    return [max(min(i * stride + window, size) - window, 0) for i in range(count)]


def predict_whole(model, x: torch.Tensor) -> torch.Tensor:
    """Logits of a (B, 3, H, W) batch at (H, W)."""
    logits = model(x)
    if logits.shape[2:] != x.shape[2:]:
        logits = F.interpolate(logits, size=x.shape[2:], mode="bilinear", align_corners=False)
    return logits


def predict_slide(model, x: torch.Tensor, window: int, stride: int, num_classes: int,
                  batch_size: int = 8) -> torch.Tensor:
    """Logits of a (B, 3, H, W) batch by overlapping windows, averaged with a count map.
    Windows of all B images are batched together, ``batch_size`` per forward pass."""
    images, _, height, width = x.shape
    boxes = [(y, x0, min(y + window, height), min(x0 + window, width))
             for y in window_starts(height, window, stride) for x0 in window_starts(width, window, stride)]
    crops = [(i, box) for box in boxes for i in range(images)]
    logits = x.new_zeros((images, num_classes, height, width))
    count = x.new_zeros((1, 1, height, width))
    for y0, x0, y1, x1 in boxes:
        count[..., y0:y1, x0:x1] += 1
    for start in range(0, len(crops), batch_size):
        chunk = crops[start:start + batch_size]
        out = predict_whole(model, torch.cat([x[i:i + 1, :, y0:y1, x0:x1] for i, (y0, x0, y1, x1) in chunk]))
        for (i, (y0, x0, y1, x1)), crop_logits in zip(chunk, out):
            logits[i, :, y0:y1, x0:x1] += crop_logits
    return logits / count


def predict_views(model, x: torch.Tensor, protocol: Protocol, num_classes: int) -> torch.Tensor:
    """Logits of a (B, 3, H, W) batch of views of one size, at that size."""
    if protocol.mode == "slide":
        return predict_slide(model, x, protocol.window, protocol.stride, num_classes, protocol.batch_size)
    return torch.cat([predict_whole(model, x[i:i + protocol.batch_size])
                      for i in range(0, len(x), protocol.batch_size)])


@torch.inference_mode()
def predict(model, image: np.ndarray, protocol: Protocol, num_classes: int, device="cpu") -> torch.Tensor:
    """(K, H, W) scores at the image's original size: logits for one view, else the mean
    of the views' softmax probabilities."""
    height, width = image.shape[:2]
    info = model.info
    total = None
    for ratio in protocol.scales:
        view_h, view_w = view_size(height, width, protocol, ratio)
        resized = image if (view_h, view_w) == (height, width) else cv2.resize(
            image, (view_w, view_h), interpolation=cv2.INTER_LINEAR)
        x = normalize(resized, info.mean, info.std, device)
        if protocol.flip:
            x = torch.cat([x, x.flip(3)])
        logits = predict_views(model, x, protocol, num_classes)
        if protocol.flip:
            logits = torch.cat([logits[:1], logits[1:].flip(3)])
        if logits.shape[2:] != (height, width):
            logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
        if not protocol.is_multiview:
            return logits[0]
        probs = logits.softmax(1).sum(0)
        total = probs if total is None else total + probs
    return total / (len(protocol.scales) * (2 if protocol.flip else 1))
