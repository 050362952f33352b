"""Test-time protocols: identities that must hold, window grids against the official
formulas, and each family's paper protocol per dataset."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn as nn

from segbench.data.datasets import ACDC, ADE20K, Cityscapes, COCOStuff, PascalContext, PascalContext59, Synthetic
from segbench.engine.evaluate import MS_RATIOS, paper_protocol
from segbench.engine.inference import Protocol, predict, predict_slide, rescale_size, view_size, window_starts
from segbench.models import ModelInfo

NUM_CLASSES = 5


class TinyConvNet(nn.Module):
    """Logits at stride 2 from 3x3 convolutions: position-dependent through zero padding,
    so windows and flips really change its output."""

    def __init__(self, symmetric: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Conv2d(8, NUM_CLASSES, 3, stride=2, padding=1)
        if symmetric:  # kernels symmetric under a left-right flip: a flip-equivariant model
            for conv in (self.conv, self.head):
                conv.weight.data = (conv.weight.data + conv.weight.data.flip(3)) / 2
        self.info = ModelInfo(name="tiny", family="test", encoder="conv", decoder="conv", num_classes=NUM_CLASSES,
                              patch_size=1, output_stride=2, crop_size=32)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)))


def image(height=45, width=61, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_slide_with_a_window_covering_the_image_equals_whole():
    model, img = TinyConvNet(), image()
    whole = predict(model, img, Protocol(mode="whole"), NUM_CLASSES)
    slide = predict(model, img, Protocol(mode="slide", window=64, stride=40), NUM_CLASSES)
    torch.testing.assert_close(slide, whole, rtol=0, atol=0)


def test_multiscale_with_one_ratio_and_no_flip_equals_single_scale():
    model, img = TinyConvNet(), image()
    for base in (Protocol(mode="whole"), Protocol(mode="slide", window=32, stride=20)):
        single = predict(model, img, base, NUM_CLASSES)
        one_ratio = predict(model, img, replace(base, scales=(1.0,), flip=False), NUM_CLASSES)
        torch.testing.assert_close(one_ratio, single, rtol=0, atol=0)
        # two identical views: the mean of their probabilities is the single view's softmax
        twice = predict(model, img, replace(base, scales=(1.0, 1.0)), NUM_CLASSES)
        torch.testing.assert_close(twice, single.softmax(0), rtol=1e-6, atol=1e-6)


def test_flip_of_a_flip_equivariant_model_changes_nothing():
    img = image()
    symmetric = TinyConvNet(symmetric=True)
    # windows [0, 33) and [28, 61) of the 61 px wide image: a layout that is its own mirror image
    for base in (Protocol(mode="whole"), Protocol(mode="slide", window=33, stride=28)):
        plain = predict(symmetric, img, base, NUM_CLASSES).softmax(0)
        flipped = predict(symmetric, img, replace(base, flip=True), NUM_CLASSES)
        torch.testing.assert_close(flipped, plain, rtol=1e-5, atol=1e-6)
    # ... and a model that is not flip-equivariant does change: the identity above is not vacuous
    model = TinyConvNet()
    assert not torch.allclose(predict(model, img, Protocol(flip=True), NUM_CLASSES),
                              predict(model, img, Protocol(), NUM_CLASSES).softmax(0), atol=1e-4)


def test_batched_windows_equal_unbatched():
    model, img = TinyConvNet(), image(70, 53)
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float()
    x = torch.cat([x, x.flip(3)])  # two views, as the flip batches them
    one = predict_slide(model, x, 32, 20, NUM_CLASSES, batch_size=1)
    many = predict_slide(model, x, 32, 20, NUM_CLASSES, batch_size=7)
    torch.testing.assert_close(many, one, rtol=1e-5, atol=1e-5)
    separately = torch.cat([predict_slide(model, x[i:i + 1], 32, 20, NUM_CLASSES, batch_size=3) for i in range(2)])
    torch.testing.assert_close(many, separately, rtol=1e-5, atol=1e-5)
    flip = Protocol(mode="slide", window=32, stride=20, flip=True)
    torch.testing.assert_close(predict(model, img, replace(flip, batch_size=1), NUM_CLASSES),
                               predict(model, img, replace(flip, batch_size=16), NUM_CLASSES), rtol=1e-5, atol=1e-6)


def test_window_grid_matches_mmseg_and_segmenter():
    for size in range(1, 200, 7):
        for window, stride in ((32, 20), (64, 64), (50, 17)):
            # mmseg slide_inference: grids = max(H - crop + stride - 1, 0) // stride + 1, windows
            # shifted back inside the image
            grids = max(size - window + stride - 1, 0) // stride + 1
            mmseg = [max(min(i * stride + window, size) - window, 0) for i in range(grids)]
            assert window_starts(size, window, stride) == mmseg
            if size >= window:  # Segmenter's sliding_window (images upscaled to at least the window)
                segmenter = [a for a in range(0, size, stride) if a < size - window] + [size - window]
                assert window_starts(size, window, stride) == segmenter


def test_slide_averages_overlapping_logits_with_a_count_map():
    class Ones(nn.Module):
        info = None

        def forward(self, x):
            return torch.ones(x.shape[0], 1, *x.shape[2:]) * x[:, :1].mean((1, 2, 3), keepdim=True)

    x = torch.arange(10.0).view(1, 1, 1, 10).expand(1, 3, 1, 10).contiguous()
    out = predict_slide(Ones(), x, window=4, stride=3, num_classes=1)
    # windows start at 0, 3, 6 (last flush with the border); window means 1.5, 4.5, 7.5
    expected = torch.tensor([1.5, 1.5, 1.5, 3.0, 4.5, 4.5, 6.0, 7.5, 7.5, 7.5])
    torch.testing.assert_close(out[0, 0, 0], expected)


def test_multiscale_ratios_scale_the_test_scale_as_mmseg_0x():
    protocol = Protocol(test_scale=(2048, 512))
    for ratio in MS_RATIOS:
        # MultiScaleFlipAug: scale (int(2048 r), int(512 r)), then the keep-ratio rescale
        assert view_size(375, 500, protocol, ratio) == rescale_size(375, 500, (int(2048 * ratio), int(512 * ratio)))
    assert view_size(375, 500, protocol) == (512, 683)  # upscaled, as mmseg's Resize does
    assert view_size(60, 90, Protocol(), 0.5) == (30, 45)  # no test scale: the image's own size
    assert view_size(100, 150, Protocol(size_divisor=32)) == (128, 160)


def info(family: str, crop: int = 512, mode: str = "slide") -> ModelInfo:
    return ModelInfo(name=family, family=family, encoder="", decoder="", num_classes=150, patch_size=16,
                     output_stride=4, crop_size=crop, test_mode=mode)


class _Kind:
    """A dataset stand-in with only what paper_protocol reads."""

    def __init__(self, cls):
        self.kind, self.test_scale, self.protocol_kind = cls.kind, cls.test_scale, cls.protocol_kind


@pytest.mark.parametrize("family, crop, dataset, expected", [
    ("segmenter", 512, ADE20K, ("slide", 512, 480, (2048, 512))),
    ("segformer", 1024, ACDC, ("slide", 1024, 768, (1920, 1080))),  # a Cityscapes model keeps its protocol
    ("segmenter", 640, ADE20K, ("slide", 640, 608, (2048, 640))),
    ("segmenter", 512, PascalContext, ("slide", 480, 320, (520, 520))),
    ("segmenter", 512, Cityscapes, ("slide", 768, 512, (2048, 1024))),
    ("setr", 512, ADE20K, ("slide", 512, 341, (2048, 512))),
    ("setr", 512, Cityscapes, ("slide", 768, 512, (2048, 1024))),
    ("setr", 512, PascalContext59, ("slide", 480, 320, None)),
    ("segformer", 512, ADE20K, ("whole", None, None, (2048, 512))),
    ("segformer", 640, ADE20K, ("whole", None, None, (2048, 640))),
    ("segformer", 512, COCOStuff, ("whole", None, None, (2048, 512))),
    ("segformer", 1024, Cityscapes, ("slide", 1024, 768, (2048, 1024))),
    ("fcn", 512, ADE20K, ("whole", None, None, (2048, 512))),
    ("deeplabv3plus", 512, Cityscapes, ("whole", None, None, (2048, 1024))),
    ("segmenter", 128, Synthetic, ("slide", 128, 96, None)),
])
def test_paper_protocols(family, crop, dataset, expected):
    protocol = paper_protocol(info(family, crop, "whole" if family in ("segformer", "fcn") else "slide"), _Kind(dataset))
    assert (protocol.mode, protocol.window, protocol.stride, protocol.test_scale) == expected
    assert protocol.source.startswith(f"{family} on {dataset.kind}")
    assert protocol.size_divisor == (32 if family == "segformer" and protocol.mode == "whole" else None)
    if family == "segmenter":
        assert protocol.min_short_side == protocol.window
    multi = paper_protocol(info(family, crop), _Kind(dataset), multi_scale=True)
    assert multi.scales == MS_RATIOS and multi.flip and multi.mode == protocol.mode


def test_a_model_stride_setting_takes_precedence():
    protocol = paper_protocol(replace(info("segmenter"), test_stride=512), _Kind(ADE20K))
    assert (protocol.window, protocol.stride) == (512, 512) and "from the model's settings" in protocol.source


def test_logits_come_back_at_the_original_size_for_every_protocol():
    model, img = TinyConvNet(), image(33, 47)
    for protocol in (Protocol(), Protocol(mode="slide", window=24, stride=16, min_short_side=40),
                     Protocol(test_scale=(64, 40), size_divisor=32, scales=(0.5, 1.5), flip=True)):
        out = predict(model, img, protocol, NUM_CLASSES)
        assert out.shape == (NUM_CLASSES, 33, 47)
        if protocol.is_multiview:
            torch.testing.assert_close(out.sum(0), torch.ones(33, 47))  # mean of probabilities
