"""CNN baselines the papers compare against: FCN and DeepLabv3+ on dilated (output
stride 8) ResNet-50/101 and MobileNetV2, as mmsegmentation's ``*-d8`` configs build them.

Encoders are timm models (``features_only``, ``output_stride=8``): timm's ``resnet50c`` /
``resnet101c`` are mmseg's ResNetV1c (deep 3x3 stem 3-32-32-64, stride in the 3x3 conv,
plain 1x1 downsample), and timm's dilation of the first block of a dilated stage by half
the stage's rate is mmseg's ``contract_dilation=True``. mmseg's MobileNetV2 dilates only
the first block of each dilated stage; timm dilates the rest, so the encoder is adjusted
(``_mmseg_mobilenetv2_dilation``). Encoder weights keep timm's names (timm ImageNet files
load under ``encoder.``); mmseg's ResNet names differ only in the stem (``stem.{0,1,3,4,6,7}``
vs timm's ``conv1.{0,1,3,4,6}`` + ``bn1``), MobileNetV2's everywhere.

Heads mirror mmseg's module names (``convs.N``, ``conv_cat``, ``image_pool.1``,
``aspp_modules.N``, ``bottleneck``, ``c1_bottleneck``, ``sep_bottleneck.N``, ``conv_seg``;
every conv + BN + ReLU is ``.conv`` / ``.bn``), so a ``decode_head.*`` loads by prefix.
mmseg trains these models with an auxiliary FCN head on stage 3 (loss weight 0.4); it is
not built here (training uses the main head only), and the papers' parameter counts for
the ResNet-101 models include it (see tests/test_cnn.py).
"""
from __future__ import annotations

import re
from typing import Sequence

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import ConvNormAct

from segbench.models import Family, ModelInfo, register_family, register_model
from segbench.models.segformer import EncoderDecoder


class SeparableConv(nn.Module):
    """mmcv's DepthwiseSeparableConvModule: depthwise 3x3 conv + BN + ReLU, then pointwise
    1x1 conv + BN + ReLU."""

    def __init__(self, in_channels: int, out_channels: int, dilation: int = 1):
        super().__init__()
        self.depthwise_conv = ConvNormAct(in_channels, in_channels, 3, dilation=dilation, groups=in_channels)
        self.pointwise_conv = ConvNormAct(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise_conv(self.depthwise_conv(x))


class FCNHead(nn.Module):
    """mmseg's FCNHead: ``num_convs`` 3x3 conv-BN-ReLU, optionally concatenated with the
    input and fused by one more (``conv_cat``), dropout, 1x1 classifier."""

    def __init__(self, in_channels: int, channels: int, num_classes: int, num_convs: int = 2,
                 concat_input: bool = True, dropout: float = 0.1):
        super().__init__()
        self.convs = nn.Sequential(*(ConvNormAct(in_channels if i == 0 else channels, channels, 3)
                                     for i in range(num_convs)))
        self.conv_cat = ConvNormAct(in_channels + channels, channels, 3) if concat_input else None
        self.dropout = nn.Dropout2d(dropout)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        x = features[-1]
        out = self.convs(x)
        if self.conv_cat is not None:
            out = self.conv_cat(torch.cat([x, out], dim=1))
        return self.conv_seg(self.dropout(out))


class DeepLabV3PlusHead(nn.Module):
    """mmseg's DepthwiseSeparableASPPHead (DeepLabv3+): image pooling + a 1x1 branch +
    separable atrous branches on the deepest map, a 3x3 bottleneck, upsampled to the
    stride-4 map and concatenated with its 1x1 reduction (``c1_bottleneck``), two separable
    convs, dropout, 1x1 classifier."""

    def __init__(self, in_channels: int, c1_in_channels: int, num_classes: int, channels: int = 512,
                 c1_channels: int = 48, dilations: Sequence[int] = (1, 12, 24, 36), dropout: float = 0.1):
        super().__init__()
        self.image_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), ConvNormAct(in_channels, channels, 1))
        self.aspp_modules = nn.ModuleList(
            ConvNormAct(in_channels, channels, 1) if d == 1 else SeparableConv(in_channels, channels, d)
            for d in dilations)
        self.bottleneck = ConvNormAct((len(dilations) + 1) * channels, channels, 3)
        self.c1_bottleneck = ConvNormAct(c1_in_channels, c1_channels, 1)
        self.sep_bottleneck = nn.Sequential(SeparableConv(channels + c1_channels, channels),
                                            SeparableConv(channels, channels))
        self.dropout = nn.Dropout2d(dropout)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        c1, x = features[0], features[-1]
        pooled = F.interpolate(self.image_pool(x), size=x.shape[2:], mode="bilinear", align_corners=False)
        out = self.bottleneck(torch.cat([pooled] + [branch(x) for branch in self.aspp_modules], dim=1))
        c1 = self.c1_bottleneck(c1)
        out = F.interpolate(out, size=c1.shape[2:], mode="bilinear", align_corners=False)
        return self.conv_seg(self.dropout(self.sep_bottleneck(torch.cat([out, c1], dim=1))))


# mmseg's mobilenet-v2-d8 configs: dilations=(1, 1, 1, 2, 2, 4, 4), applied by mmseg's
# MobileNetV2.make_layer to the first block of each stage only.
MMSEG_MOBILENETV2_DILATIONS = (1, 1, 1, 2, 2, 4, 4)


def _mmseg_mobilenetv2_dilation(encoder: nn.Module) -> None:
    for stage, dilation in zip(encoder.blocks, MMSEG_MOBILENETV2_DILATIONS):
        for i, block in enumerate(stage):
            rate = dilation if i == 0 else 1
            block.conv_dw.dilation, block.conv_dw.padding = (rate, rate), (rate, rate)


def dilated_encoder(timm_name: str, **timm_kwargs) -> nn.Module:
    """A timm backbone at output stride 8 returning its stride-4, 8, 8, 8 feature maps."""
    encoder = timm.create_model(timm_name, pretrained=False, features_only=True, output_stride=8,
                                out_indices=(1, 2, 3, 4), **timm_kwargs)
    if timm_name.startswith("mobilenetv2"):
        _mmseg_mobilenetv2_dilation(encoder)
    return encoder


def _cnn(num_classes: int, *, family: str, encoder: str, timm_name: str, head_channels: int = 512,
         dilations: Sequence[int] = (1, 12, 24, 36), crop_size: int = 512, **timm_kwargs) -> EncoderDecoder:
    enc = dilated_encoder(timm_name, **timm_kwargs)
    enc_channels = enc.feature_info.channels()
    if family == "fcn":
        dec = FCNHead(enc_channels[-1], head_channels, num_classes)
    else:
        dec = DeepLabV3PlusHead(enc_channels[-1], enc_channels[0], num_classes, head_channels, dilations=dilations)
    info = ModelInfo(name="", family=family, encoder=encoder, decoder=family, num_classes=num_classes,
                     patch_size=1, output_stride=8 if family == "fcn" else 4, crop_size=crop_size,
                     test_mode="whole")  # mmseg's ADE20K configs test on the whole image
    return EncoderDecoder(enc, dec, info)


# --- mmsegmentation checkpoints ------------------------------------------------------

# mmseg MobileNetV2's InvertedResidual ``conv.N.{conv,bn}`` -> timm's names; stage 1 has no
# expansion conv (timm's DepthwiseSeparableConv).
_MV2_FIRST_STAGE = (("conv_dw", "bn1"), ("conv_pw", "bn2"))
_MV2_STAGE = (("conv_pw", "bn1"), ("conv_dw", "bn2"), ("conv_pwl", "bn3"))


def _mmseg_encoder_key(key: str) -> str:
    key = re.sub(r"^stem\.7\.", "bn1.", key)  # ResNetV1c deep stem: conv-bn-relu x3 ...
    key = re.sub(r"^stem\.", "conv1.", key)  # ... timm keeps the last BN outside (bn1)
    key = re.sub(r"^conv1\.conv\.", "conv_stem.", key)  # MobileNetV2 stem
    key = re.sub(r"^conv1\.bn\.", "bn1.", key)
    block = re.match(r"^layer(\d)\.(\d+)\.conv\.(\d)\.(conv|bn)\.(.+)$", key)  # MobileNetV2 blocks
    if block:
        stage, index, part, kind, rest = int(block[1]), block[2], int(block[3]), block[4], block[5]
        conv, bn = (_MV2_FIRST_STAGE if stage == 1 else _MV2_STAGE)[part]
        key = f"blocks.{stage - 1}.{index}.{conv if kind == 'conv' else bn}.{rest}"
    return key


def convert_mmseg_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An mmsegmentation FCN / DeepLabv3+ checkpoint's ``state_dict`` (ResNetV1c or
    MobileNetV2 backbone) -> this module's names: ``backbone.`` -> ``encoder.`` with timm's
    layer names, ``decode_head.`` -> ``decoder.``. ``auxiliary_head.*`` is returned
    unchanged (segbench builds no auxiliary head), for the loader to report."""
    out = {}
    for key, value in state_dict.items():
        if key.startswith("backbone."):
            key = "encoder." + _mmseg_encoder_key(key[len("backbone."):])
        elif key.startswith("decode_head."):
            key = "decoder." + key[len("decode_head."):]
        out[key] = value
    return out


# mmseg's configs train both with its "cnn" recipes; its model-zoo files need their own renames.
register_family(Family("fcn", recipe="cnn", mmseg_state_dict=convert_mmseg_state_dict))
register_family(Family("deeplabv3plus", recipe="cnn", mmseg_state_dict=convert_mmseg_state_dict))


# --- variants -------------------------------------------------------------------------

@register_model
def fcn_r50_d8(num_classes: int, **kw) -> EncoderDecoder:
    return _cnn(num_classes, family="fcn", encoder="resnet50_v1c_d8", timm_name="resnet50c", **kw)


@register_model
def fcn_r101_d8(num_classes: int, **kw) -> EncoderDecoder:
    return _cnn(num_classes, family="fcn", encoder="resnet101_v1c_d8", timm_name="resnet101c", **kw)


@register_model
def fcn_mobilenetv2_d8(num_classes: int, **kw) -> EncoderDecoder:
    return _cnn(num_classes, family="fcn", encoder="mobilenetv2_d8", timm_name="mobilenetv2_100", **kw)


@register_model
def deeplabv3plus_r50_d8(num_classes: int, **kw) -> EncoderDecoder:
    return _cnn(num_classes, family="deeplabv3plus", encoder="resnet50_v1c_d8", timm_name="resnet50c", **kw)


@register_model
def deeplabv3plus_r101_d8(num_classes: int, **kw) -> EncoderDecoder:
    return _cnn(num_classes, family="deeplabv3plus", encoder="resnet101_v1c_d8", timm_name="resnet101c", **kw)


@register_model
def deeplabv3plus_mobilenetv2_d8(num_classes: int, **kw) -> EncoderDecoder:
    return _cnn(num_classes, family="deeplabv3plus", encoder="mobilenetv2_d8", timm_name="mobilenetv2_100", **kw)


# Tiny dilated ResNets (one basic block per stage, 16-128 channels) for the synthetic CPU
# quickstart (128 px): not paper models. ASPP rates scaled to the 16x16 stride-8 maps.
MICRO_RESNET = dict(timm_name="resnet18", layers=(1, 1, 1, 1), channels=(16, 32, 64, 128),
                    stem_type="deep", stem_width=8)


@register_model
def fcn_micro(num_classes: int, **kw) -> EncoderDecoder:
    return _cnn(num_classes, family="fcn", encoder="resnet_micro_d8", head_channels=64, crop_size=128,
                **MICRO_RESNET, **kw)


@register_model
def deeplabv3plus_micro(num_classes: int, **kw) -> EncoderDecoder:
    return _cnn(num_classes, family="deeplabv3plus", encoder="resnet_micro_d8", head_channels=64, crop_size=128,
                dilations=(1, 3, 6, 9), **MICRO_RESNET, **kw)
