"""The papers' test protocols: for a model family on a dataset, the settings of the official
evaluation (``paper_protocol``), each with the official file it comes from. The view chain
they parametrise (resize steps, windows, scales, flips, merging) is ``engine.inference``;
the README's protocol table lists every cell and what segbench follows where an official
repository and its paper disagree.

One function per family; a family or dataset without an official setting (e.g. the
synthetic set) gets the model's own ``info.test_mode`` with its crop as the window.
``info.test_stride`` (e.g. an official checkpoint's setting) takes precedence over any
stride here.
"""
from __future__ import annotations

from dataclasses import replace

from segbench.engine.inference import Protocol
from segbench.models import ModelInfo

MS_RATIOS = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)

# rstrudel/segmenter: segm/eval/miou.py takes the test size from config.yml's `im_size` of the
# dataset (ade20k 512, pascal_context 520, cityscapes 1024) and the mmseg test scale
# (max_ratio * im_size, im_size) of segm/data/config/<dataset>.py (max_ratio 4, 8, 2).
SEGMENTER_TEST_SCALE = {"ade20k": (2048, 512), "pascal_context": (4160, 520), "cityscapes": (2048, 1024)}
# config.yml `crop_size` per dataset: the training crop, which miou.py slides (ADE20K: the model's, 512 or 640).
SEGMENTER_WINDOW = {"pascal_context": 480, "cityscapes": 768}

# fudan-zvg/SETR configs/SETR/*: test scale of configs/_base_/datasets/{ade20k,cityscapes_768x768,
# pascal_context}.py, windows of test_cfg, and the *_MS.py ratios (Naive / MLA on ADE20K: 0.5-1.0).
SETR_TEST_SCALE = {"ade20k": (2048, 512), "cityscapes": (2049, 1025), "pascal_context": (520, 520)}
SETR_SLIDE = {"cityscapes": (768, 512), "pascal_context": (480, 320)}
SETR_ADE_MS_RATIOS = {"naive": (0.5, 0.75, 1.0), "mla": (0.5, 0.75, 1.0)}

# mmsegmentation 0.x configs/_base_/datasets/pascal_context.py + the FCN / DeepLabv3+ 480x480 configs.
CNN_SLIDE = {"pascal_context": (480, 320)}


def paper_protocol(info: ModelInfo, dataset, multi_scale: bool = False) -> Protocol:
    """The single-scale (or multi-scale + flip) test protocol of the model's paper on
    ``dataset`` (anything with ``kind`` and ``test_scale``)."""
    kind = (dataset.protocol_kind or dataset.kind).removesuffix("_59")  # ACDC: a Cityscapes model's protocol
    rule = FAMILY_RULES.get(info.family, _model_default)
    protocol, ratios = rule(info, kind, dataset.test_scale, multi_scale)
    if protocol.mode == "slide" and info.test_stride:
        protocol = replace(protocol, stride=info.test_stride,
                           source=f"{protocol.source}; stride {info.test_stride} from the model's settings")
    protocol = replace(protocol, source=f"{info.family} on {dataset.kind}: "
                       f"{f'slide {protocol.window}/{protocol.stride}' if protocol.mode == 'slide' else 'whole'} "
                       f"({protocol.source})")
    if multi_scale:
        protocol = replace(protocol, scales=ratios, flip=True,
                           source=f"{protocol.source} + ratios {ratios[0]}-{ratios[-1]}, flip")
    return protocol


def _segmenter(info: ModelInfo, kind: str, dataset_scale, multi_scale: bool):
    # segm/eval/miou.py: window = the training crop, stride = crop - 32 whatever the dataset
    # (config.yml's window_stride is the training-time evaluation's), short side upscaled to
    # the window on the normalised tensor (segm/model/utils.py: inference -> resize).
    window = SEGMENTER_WINDOW.get(kind, info.crop_size)
    protocol = Protocol(mode="slide", window=window, stride=max(window - 32, 1),
                        test_scale=SEGMENTER_TEST_SCALE.get(kind, dataset_scale), min_short_side=window,
                        source="rstrudel/segmenter segm/eval/miou.py, config.yml, segm/data/config")
    return protocol, MS_RATIOS  # segm/data/base.py: set_multiscale_mode


def _setr(info: ModelInfo, kind: str, dataset_scale, multi_scale: bool):
    # configs/SETR/*: slide test_cfg; SS Resize plain keep-ratio, except Pascal Context's
    # Resize(dataset='pascal_context') (short side 520); the *_MS.py Resize(setr_multi_scale=True,
    # crop_size) sets each view's short side to max(scaled short side, crop) (mmseg/datasets/
    # pipelines/transforms.py).
    window, stride = SETR_SLIDE.get(kind, (info.crop_size, info.crop_size * 2 // 3))
    floor = window if kind in SETR_TEST_SCALE and (multi_scale or kind == "pascal_context") else None
    ratios = SETR_ADE_MS_RATIOS.get(info.decoder, MS_RATIOS) if kind == "ade20k" else MS_RATIOS
    protocol = Protocol(mode="slide", window=window, stride=stride, test_scale=SETR_TEST_SCALE.get(kind, dataset_scale),
                        short_side_floor=floor, source="fudan-zvg/SETR configs/SETR, mmseg/datasets/pipelines")
    return protocol, ratios


def _segformer(info: ModelInfo, kind: str, dataset_scale, multi_scale: bool):
    # NVlabs/SegFormer local_configs/segformer/B*/: Cityscapes slide 1024/768 on the plain
    # keep-ratio (2048, 1024) Resize; elsewhere the whole image after AlignedResize
    # (keep-ratio rescale, then the uint8 result resized to sides divisible by 32).
    if kind == "cityscapes":
        return Protocol(mode="slide", window=1024, stride=768, test_scale=dataset_scale,
                        source="NVlabs/SegFormer local_configs/segformer/B*/*.1024x1024.city.160k.py"), MS_RATIOS
    test_scale = (2048, 640) if kind == "ade20k" and info.crop_size == 640 else dataset_scale
    return Protocol(mode="whole", test_scale=test_scale, size_divisor=32,
                    source="NVlabs/SegFormer local_configs (AlignedResize, size_divisor 32)"), MS_RATIOS


def _cnn(info: ModelInfo, kind: str, dataset_scale, multi_scale: bool):
    # mmsegmentation 0.x configs/{fcn,deeplabv3plus}: whole image (ADE20K 512x512, Cityscapes
    # 512x1024 configs), Pascal Context slide 480/320; the dataset's plain keep-ratio Resize.
    if kind in CNN_SLIDE:
        window, stride = CNN_SLIDE[kind]
        return Protocol(mode="slide", window=window, stride=stride, test_scale=dataset_scale,
                        source=f"mmseg 0.x {info.family} pascal_context configs"), MS_RATIOS
    return Protocol(mode="whole", test_scale=dataset_scale, source=f"mmseg 0.x {info.family} configs: whole image"), \
        MS_RATIOS


def _model_default(info: ModelInfo, kind: str, dataset_scale, multi_scale: bool):
    # No paper: the model's own settings (a user model's suite entry or `info`, segbench.models.custom).
    test_scale = info.test_scale or dataset_scale
    if info.test_mode == "whole":
        return Protocol(mode="whole", test_scale=test_scale, size_divisor=info.size_divisor,
                        source="the model's test_mode: whole image"), MS_RATIOS
    window = info.test_window or info.crop_size
    return Protocol(mode="slide", window=window, stride=max(window - 32, 1), test_scale=test_scale,
                    size_divisor=info.size_divisor, source="the model's test_mode: slide, stride = window - 32"), MS_RATIOS


FAMILY_RULES = {"segmenter": _segmenter, "setr": _setr, "segformer": _segformer, "fcn": _cnn, "deeplabv3plus": _cnn}
