"""Every (family x dataset x single / multi-scale) cell of the README's protocol table: the
settings ``paper_protocol`` picks, and the model input its view chain builds, bit for bit,
against a derivation written here from the cited official code (never from segbench's):

- mmcv 1.x ``imrescale``: factor = min(max(scale) / long side, min(scale) / short side),
  sides int(side * factor + 0.5), cv2 bilinear on the uint8 image (``mmcv/image/geometric.py``);
- mmseg 0.x ``MultiScaleFlipAug``: scale (int(s0 * r), int(s1 * r)) per ratio, each view and
  then its flip, the flip made on the resized uint8 image (``RandomFlip`` after ``Resize``);
- NVlabs/SegFormer ``AlignedResize``: that uint8 image resized again (cv2 bilinear) to
  sides int(ceil(side / 32)) * 32 (``mmseg/datasets/pipelines/transforms.py``);
- fudan-zvg/SETR ``Resize``: scale := (new_short * h / w, new_short) if h > w else
  (new_short, new_short * w / h), new_short = max(min(scale), crop) (``setr_multi_scale``)
  or 520 on Pascal Context (``dataset='pascal_context'``), then ``imrescale``;
- mmseg 0.x ``Normalize`` (float32 mean / std) -> mmcv ``imnormalize``: cv2.subtract the
  mean, cv2.multiply by 1 / float64(std), on a float32 copy;
- rstrudel/segmenter ``segm/model/utils.py: resize``: the normalised tensor, if its short
  side is below the window, F.interpolate(bilinear) to (window, int(w / h * window)) or
  (int(h / w * window), window).

Image sizes: 375x500 (ADE20K / Pascal Context-like, upscaled), 49x73 (below every window),
1x2000 (extreme aspect; its giant views are checked by size only) and 1024x2048 (Cityscapes).
"""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segbench.data.datasets import ACDC, ADE20K, Cityscapes, COCOStuff, PascalContext, PascalContext59, Synthetic
from segbench.engine.inference import model_inputs, view_size
from segbench.engine.protocols import paper_protocol
from segbench.errors import SegbenchError
from segbench.models import IMAGENET_MEAN, IMAGENET_STD, VIT_MEAN, VIT_STD, ModelInfo, create_model

SIZES = [(375, 500), (49, 73), (1, 2000), (1024, 2048)]
MS6 = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
MATERIALISE = 3_000_000  # views of more pixels than this are checked by their size only


# --- the official steps, written from the cited code ------------------------------------

def mmcv_rescale_wh(w: int, h: int, scale) -> tuple[int, int]:
    factor = min(max(scale) / max(h, w), min(scale) / min(h, w))
    return int(w * float(factor) + 0.5), int(h * float(factor) + 0.5)


def setr_scale(h: int, w: int, new_short: float) -> tuple[float, float]:
    return (new_short * h / w, new_short) if h > w else (new_short, new_short * w / h)


def segmenter_resize_hw(h: int, w: int, window: int) -> tuple[int, int]:
    if min(h, w) >= window:
        return h, w
    if h < w:
        return window, int(w / h * window)
    return int(h / w * window), window


def reference_sizes(h: int, w: int, cell: dict, ratio: float) -> list[tuple[str, int, int]]:
    """The (step, height, width) chain of one ratio."""
    s0, s1 = cell["test_scale"]
    scale = (int(s0 * ratio), int(s1 * ratio))
    floor = cell.get("setr_floor_ms") if cell["ms"] else cell.get("setr_floor_ss")
    if floor is not None:
        scale = setr_scale(h, w, max(min(scale), floor))
    new_w, new_h = mmcv_rescale_wh(w, h, scale)
    steps = [("uint8", new_h, new_w)]
    if cell.get("align"):
        steps.append(("uint8", int(np.ceil(new_h / 32)) * 32, int(np.ceil(new_w / 32)) * 32))
    if cell.get("segmenter_window"):
        steps.append(("float",) + segmenter_resize_hw(steps[-1][1], steps[-1][2], cell["segmenter_window"]))
    return steps


def mmcv_normalize(img: np.ndarray, mean, std) -> torch.Tensor:
    mean64 = np.float64(np.array(mean, dtype=np.float32).reshape(1, -1))
    stdinv = 1 / np.float64(np.array(std, dtype=np.float32).reshape(1, -1))
    out = img.copy().astype(np.float32)
    cv2.subtract(out, mean64, out)
    cv2.multiply(out, stdinv, out)
    return torch.from_numpy(out).permute(2, 0, 1)[None]


def reference_input(image: np.ndarray, cell: dict, ratio: float, flip: bool, mean, std) -> torch.Tensor:
    # the test pipelines' order: Resize (/ AlignedResize), RandomFlip, Normalize; Segmenter's
    # resize runs on the model side, after all of them
    img, steps = image, reference_sizes(*image.shape[:2], cell, ratio)
    for _, h, w in (s for s in steps if s[0] == "uint8"):
        img = cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)
    x = mmcv_normalize(np.ascontiguousarray(img[:, ::-1]) if flip else img, mean, std)
    for _, h, w in (s for s in steps if s[0] == "float"):
        if (h, w) != tuple(x.shape[2:]):
            x = F.interpolate(x, (h, w), mode="bilinear")
    return x


# --- the cells (README: Test protocols) ---------------------------------------------------

SEG = dict(family="segmenter", decoder="mask", mean=VIT_MEAN, std=VIT_STD)
SETR = dict(family="setr", mean=IMAGENET_MEAN, std=IMAGENET_STD)
FORMER = dict(family="segformer", decoder="all_mlp_c768", mean=IMAGENET_MEAN, std=IMAGENET_STD, align=True,
              mode="whole")
CNN_W = dict(mean=IMAGENET_MEAN, std=IMAGENET_STD, mode="whole")

CELLS = {
    # rstrudel/segmenter segm/eval/miou.py + config.yml + segm/data/config/<dataset>.py
    "segmenter-ade20k": dict(SEG, crop=512, dataset=ADE20K, test_scale=(2048, 512), segmenter_window=512,
                             mode="slide", window=512, stride=480, ratios=MS6),
    "segmenter-ade20k-640": dict(SEG, crop=640, dataset=ADE20K, test_scale=(2048, 512), segmenter_window=640,
                                 mode="slide", window=640, stride=608, ratios=MS6),
    "segmenter-pascal_context": dict(SEG, crop=480, dataset=PascalContext, test_scale=(4160, 520),
                                     segmenter_window=480, mode="slide", window=480, stride=448, ratios=MS6),
    "segmenter-cityscapes": dict(SEG, crop=768, dataset=Cityscapes, test_scale=(2048, 1024), segmenter_window=768,
                                 mode="slide", window=768, stride=736, ratios=MS6),
    # fudan-zvg/SETR configs/SETR/*.py and *_MS.py, configs/_base_/datasets/*.py
    "setr-ade20k-pup": dict(SETR, decoder="pup", crop=512, dataset=ADE20K, test_scale=(2048, 512),
                            setr_floor_ms=512, mode="slide", window=512, stride=341, ratios=MS6),
    "setr-ade20k-mla": dict(SETR, decoder="mla", crop=512, dataset=ADE20K, test_scale=(2048, 512),
                            setr_floor_ms=512, mode="slide", window=512, stride=341, ratios=(0.5, 0.75, 1.0)),
    "setr-ade20k-naive": dict(SETR, decoder="naive", crop=512, dataset=ADE20K, test_scale=(2048, 512),
                              setr_floor_ms=512, mode="slide", window=512, stride=341, ratios=(0.5, 0.75, 1.0)),
    "setr-pascal_context": dict(SETR, decoder="pup", crop=480, dataset=PascalContext, test_scale=(520, 520),
                                setr_floor_ss=480, setr_floor_ms=480, mode="slide", window=480, stride=320,
                                ratios=MS6),
    "setr-pascal_context_59": dict(SETR, decoder="mla", crop=480, dataset=PascalContext59, test_scale=(520, 520),
                                   setr_floor_ss=480, setr_floor_ms=480, mode="slide", window=480, stride=320,
                                   ratios=MS6),
    "setr-cityscapes": dict(SETR, decoder="pup", crop=768, dataset=Cityscapes, test_scale=(2049, 1025),
                            setr_floor_ms=768, mode="slide", window=768, stride=512, ratios=MS6),
    # NVlabs/SegFormer local_configs/segformer/B*/*.py, local_configs/_base_/datasets/*.py
    "segformer-ade20k": dict(FORMER, crop=512, dataset=ADE20K, test_scale=(2048, 512), ratios=MS6),
    "segformer-ade20k-640": dict(FORMER, crop=640, dataset=ADE20K, test_scale=(2048, 640), ratios=MS6),
    "segformer-coco_stuff": dict(FORMER, crop=512, dataset=COCOStuff, test_scale=(2048, 512), ratios=MS6),
    "segformer-cityscapes": dict(FORMER, crop=1024, dataset=Cityscapes, test_scale=(2048, 1024), align=False,
                                 mode="slide", window=1024, stride=768, ratios=MS6),
    # mmsegmentation 0.x configs/{fcn,deeplabv3plus}/*, configs/_base_/datasets/*.py
    **{f"{family}-{kind.kind}": dict(CNN_W, family=family, decoder=family, crop=512, dataset=kind,
                                     test_scale=kind.test_scale, ratios=MS6)
       for family in ("fcn", "deeplabv3plus") for kind in (ADE20K, Cityscapes)},
    **{f"{family}-pascal_context": dict(CNN_W, family=family, decoder=family, crop=512, dataset=PascalContext,
                                        test_scale=(520, 520), mode="slide", window=480, stride=320, ratios=MS6)
       for family in ("fcn", "deeplabv3plus")},
}


class _Kind:
    """A dataset stand-in with only what paper_protocol reads."""

    def __init__(self, cls):
        self.kind, self.test_scale, self.protocol_kind = cls.kind, cls.test_scale, cls.protocol_kind


def cell_info(cell: dict) -> ModelInfo:
    return ModelInfo(name=cell["family"], family=cell["family"], encoder="", decoder=cell["decoder"], num_classes=60,
                     patch_size=16, output_stride=4, crop_size=cell["crop"], mean=cell["mean"], std=cell["std"],
                     test_mode=cell["mode"])


@pytest.mark.parametrize("ms", [False, True], ids=["ss", "ms"])
@pytest.mark.parametrize("name", list(CELLS))
def test_cell_settings_and_view_chain(name, ms):
    cell = dict(CELLS[name], ms=ms)
    protocol = paper_protocol(cell_info(cell), _Kind(cell["dataset"]), multi_scale=ms)
    assert (protocol.mode, protocol.window, protocol.stride) == (cell["mode"], cell.get("window"), cell.get("stride"))
    assert protocol.scales == (cell["ratios"] if ms else (1.0,)) and protocol.flip is ms
    assert protocol.source.startswith(f"{cell['family']} on {cell['dataset'].kind}")
    rng = np.random.default_rng(sum(map(ord, name)))
    for h, w in SIZES:
        expected_sizes = [reference_sizes(h, w, cell, r)[-1][1:] for r in protocol.scales]
        assert [view_size(h, w, protocol, r) for r in protocol.scales] == expected_sizes, (h, w)
        if ms and h * w > 400_000:
            continue  # 6 scales x flip of a Cityscapes frame: its sizes above suffice (its SS views are built)
        if max(a * b for a, b in expected_sizes) > MATERIALISE:
            continue
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        if min(min(step[1:]) for r in protocol.scales for step in reference_sizes(h, w, cell, r)) < 1:
            with pytest.raises(SegbenchError, match="has no pixels left"):  # cv2 fails in the official code
                list(model_inputs(image, protocol, cell["mean"], cell["std"]))
            continue
        views = list(model_inputs(image, protocol, cell["mean"], cell["std"]))
        assert len(views) == len(protocol.scales)
        for ratio, x in zip(protocol.scales, views):
            assert x.dtype == torch.float32 and x.shape[0] == (2 if ms else 1)
            for k, flip in enumerate([False, True] if ms else [False]):
                ref = reference_input(image, cell, ratio, flip, cell["mean"], cell["std"])
                assert x[k:k + 1].shape == ref.shape, (name, h, w, ratio, flip)
                assert torch.equal(x[k:k + 1], ref), (name, h, w, ratio, flip)


def test_the_issue_examples():
    """The sizes of the deviations the issue reports, as the official code gives them."""
    segformer = paper_protocol(cell_info(dict(CELLS["segformer-ade20k"])), _Kind(ADE20K))
    assert view_size(375, 500, segformer) == (512, 704)  # imrescale -> 512x683, then aligned -> 512x704
    segmenter = paper_protocol(cell_info(dict(CELLS["segmenter-ade20k"], crop=128)), _Kind(Synthetic))
    assert view_size(49, 73, segmenter) == (128, 190)  # official resize: 128 x int(73 / 49 * 128); not 127
    context = paper_protocol(cell_info(dict(CELLS["segmenter-pascal_context"])), _Kind(PascalContext))
    assert view_size(375, 500, context) == (520, 693)  # short side 520 (the dataset's own rule: long side 520)


def test_a_model_stride_setting_takes_precedence():
    info = cell_info(dict(CELLS["segmenter-ade20k"])).with_(test_stride=512)
    protocol = paper_protocol(info, _Kind(ADE20K))
    assert (protocol.window, protocol.stride) == (512, 512) and "from the model's settings" in protocol.source


def test_a_cityscapes_model_keeps_its_protocol_on_acdc():
    # ACDC / Dark Zurich are Cityscapes-labelled: SegFormer's Cityscapes windows, at their native 1920x1080
    info = cell_info(dict(CELLS["segformer-cityscapes"]))
    protocol = paper_protocol(info, _Kind(ACDC))
    assert (protocol.mode, protocol.window, protocol.stride, protocol.test_scale) == ("slide", 1024, 768, ACDC.test_scale)
    assert paper_protocol(info, _Kind(Cityscapes)).window == 1024


def test_synthetic_keeps_the_model_defaults():
    """The quickstart's set has no official protocol: no test resize, the model's crop as window."""
    for family, mode, stride in (("segmenter", "slide", 96), ("setr", "slide", 85), ("segformer", "whole", None),
                                 ("fcn", "whole", None)):
        info = ModelInfo(name=family, family=family, encoder="", decoder="mla", num_classes=9, patch_size=8,
                         output_stride=1, crop_size=128, test_mode=mode)
        for ms in (False, True):
            protocol = paper_protocol(info, _Kind(Synthetic), multi_scale=ms)
            assert (protocol.mode, protocol.stride, protocol.test_scale) == (mode, stride, None)
            assert view_size(128, 128, protocol) == (128, 128)


@pytest.mark.parametrize("arch, mean, std", [
    ("segmenter_t16_mask", (127.5,) * 3, (127.5,) * 3),  # segm/data/utils.py STATS["vit"]: 0.5 x 255
    ("segmenter_deit_b16_linear", (123.68, 116.28, 103.53), (58.4, 57.12, 57.38)),  # np.round(255 * deit, 2)
    ("segmenter_deit_s16_mask", (123.68, 116.28, 103.53), (58.4, 57.12, 57.38)),
    ("setr_l16_pup", (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)),  # configs' img_norm_cfg
    ("segformer_b0", (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)),
    ("fcn_r50_d8", (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)),
])
def test_normalisation_constants(arch, mean, std):
    with torch.device("meta"):
        info = create_model(arch, 150).info
    assert (info.mean, info.std) == (mean, std)
    assert math.isclose(mean[0], round(255 * (0.5 if mean[0] == 127.5 else 0.485), 3), abs_tol=0.006)
