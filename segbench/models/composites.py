"""Encoder x decoder combinations the SegFormer paper compares, built from the encoders and
heads of the other families (nothing new but glue):

- Table 3 (ADE20K, 160k iterations): ``mit_b2_mla`` and ``mit_b5_mla`` (MiT + SETR's MLA
  neck and head), ``vit_l16_mlp`` (ViT-L/16 + the All-MLP decoder). The table's other
  cells are registered elsewhere: MiT + MLP is ``segformer_b2`` / ``segformer_b5(_640)``,
  ViT-L + MLA is ``setr_l16_mla``.
- Table 1d (ADE20K): ``resnet50_mlp``, ``resnet101_mlp``, ``resnext101_mlp`` (the All-MLP
  decoder, C = 768, on stages 1-4 of a plain stride-32 CNN) and ``mit_b2_s4_mlp`` (MiT-B2
  with the decoder on stage 4 alone). MiT-B2 / B3 on stages 1-4 are ``segformer_b2`` / ``b3``.

The paper gives no code for these; what is not stated is chosen to reproduce its counts
(tests/test_composites.py, tests/test_profiling_papers.py):

- the CNNs are mmseg's: ResNetV1c (deep stem, timm ``resnet50c`` / ``resnet101c``) and
  ResNeXt-101 64x4d (timm ``resnext101_64x4d``); Table 1d's params and GFLOPs match these
  to 0.2 % (a plain ResNet-50 stem gives 1.8 % fewer GFLOPs);
- ViT-L + MLP: decoder width C = 128 over four 1024-channel maps at 1/16, the only width
  that gives Table 3's 0.6 M decoder parameters and 0.6 decoder GFLOPs (C = 256 gives 1.2 M);
  the maps are the outputs of blocks 6, 12, 18, 24 (SETR-MLA's taps; the paper does not say),
  without the cls token (dropped before the blocks, as SETR-MLA); inputs should be multiples
  of 16 (SegFormer's whole-image test rounds sides up to multiples of 32);
- MiT-B2 (S4): linear_c4 (512 -> 768) upsampled to 1/4 and classified there, without a
  fuse layer: 24.7 M params and 22.3 GFLOPs as Table 1d prints (a 768 x 768 fuse layer
  would give 25.3 M; classifying at 1/32 would give 20.4 GFLOPs);
- MiT + MLA: the MLA neck (1x1 + top-down sums + 3x3 at each stage's resolution) and head
  (streams upsampled to the stride-4 map, classifier there); the neck sits in the decoder
  here (in SETR it is part of the ViT encoder). Table 3's 4.2 M / 87.7 GFLOPs for this
  decoder are not reproduced by this or any variant we tried (see the tests).

Every composite is ``family="segformer"``: trained with SegFormer's recipe and tested as
SegFormer tests (whole image on ADE20K), as in the paper's ablations.
"""
from __future__ import annotations

from typing import Sequence

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

from segbench.models import ModelInfo, register_model
from segbench.models.segformer import (MIT_DEPTHS, MIT_DIMS, MIT_HEADS, AllMLPDecoder, EncoderDecoder, LinearEmbed,
                                       MixVisionTransformer)
from segbench.models.setr import MLAHead, MLANeck, SETRViT


class MLADecoder(nn.Module):
    """SETR's MLA neck (``mla``) and head (``head``) on a feature pyramid; logits at the
    first (finest) map's resolution."""

    def __init__(self, in_channels: Sequence[int], num_classes: int, channels: int = 256, head_channels: int = 128):
        super().__init__()
        self.mla = MLANeck(list(in_channels), channels)
        self.head = MLAHead(channels, num_classes, head_channels, num_streams=len(in_channels), upsample=1)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.head(self.mla(list(features)), features[0].shape[2:])


class LastStageMLPDecoder(nn.Module):
    """The MLP decoder on the last map alone (Table 1d "S4"): ``linear_c4`` to ``dim``
    channels, bilinear upsampling to the first map's size (1/4), ``linear_pred``."""

    def __init__(self, in_channels: int, num_classes: int, dim: int = 768, dropout: float = 0.1):
        super().__init__()
        self.linear_c4 = LinearEmbed(in_channels, dim)
        self.dropout = nn.Dropout2d(dropout)
        self.linear_pred = nn.Conv2d(dim, num_classes, 1)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        x = F.interpolate(self.linear_c4(features[-1]), size=features[0].shape[2:], mode="bilinear",
                          align_corners=False)
        return self.linear_pred(self.dropout(x))


def _composite(encoder: nn.Module, decoder: nn.Module, *, num_classes: int, encoder_name: str, decoder_name: str,
               output_stride: int, patch_size: int, crop_size: int) -> EncoderDecoder:
    info = ModelInfo(name="", family="segformer", encoder=encoder_name, decoder=decoder_name, num_classes=num_classes,
                     patch_size=patch_size, output_stride=output_stride, crop_size=crop_size, test_mode="whole")
    return EncoderDecoder(encoder, decoder, info)


def _mit_mla(size: str, num_classes: int, crop_size: int = 512, drop_path: float = 0.1) -> EncoderDecoder:
    encoder = MixVisionTransformer(MIT_DIMS[size], MIT_DEPTHS[size], MIT_HEADS, drop_path=drop_path)
    return _composite(encoder, MLADecoder(MIT_DIMS[size], num_classes), num_classes=num_classes,
                      encoder_name=f"mit_{size}", decoder_name="mla", output_stride=4, patch_size=4,
                      crop_size=crop_size)


def _cnn_mlp(num_classes: int, timm_name: str, encoder_name: str, decoder_dim: int = 768, crop_size: int = 512,
             **timm_kwargs) -> EncoderDecoder:
    encoder = timm.create_model(timm_name, pretrained=False, features_only=True, out_indices=(1, 2, 3, 4),
                                **timm_kwargs)  # strides 4, 8, 16, 32 (not dilated)
    decoder = AllMLPDecoder(encoder.feature_info.channels(), num_classes, decoder_dim)
    return _composite(encoder, decoder, num_classes=num_classes, encoder_name=encoder_name,
                      decoder_name=f"all_mlp_c{decoder_dim}", output_stride=4, patch_size=1, crop_size=crop_size)


# --- variants -------------------------------------------------------------------------

@register_model
def mit_b2_mla(num_classes: int, **kw) -> EncoderDecoder:
    return _mit_mla("b2", num_classes, **kw)


@register_model
def mit_b5_mla(num_classes: int, **kw) -> EncoderDecoder:
    return _mit_mla("b5", num_classes, **kw)


@register_model
def vit_l16_mlp(num_classes: int, crop_size: int = 512, decoder_dim: int = 128, drop_path: float = 0.0) -> EncoderDecoder:
    encoder = SETRViT(crop_size, 16, dim=1024, depth=24, heads=16, out_indices=(5, 11, 17, 23), drop_path=drop_path,
                      cls_through_blocks=False)
    return _composite(encoder, AllMLPDecoder([1024] * 4, num_classes, decoder_dim), num_classes=num_classes,
                      encoder_name="vit_l16", decoder_name=f"all_mlp_c{decoder_dim}", output_stride=16, patch_size=16,
                      crop_size=crop_size)


@register_model
def resnet50_mlp(num_classes: int, **kw) -> EncoderDecoder:
    return _cnn_mlp(num_classes, "resnet50c", "resnet50_v1c", **kw)


@register_model
def resnet101_mlp(num_classes: int, **kw) -> EncoderDecoder:
    return _cnn_mlp(num_classes, "resnet101c", "resnet101_v1c", **kw)


@register_model
def resnext101_mlp(num_classes: int, **kw) -> EncoderDecoder:
    return _cnn_mlp(num_classes, "resnext101_64x4d", "resnext101_64x4d", **kw)


@register_model
def mit_b2_s4_mlp(num_classes: int, crop_size: int = 512, decoder_dim: int = 768, drop_path: float = 0.1) -> EncoderDecoder:
    encoder = MixVisionTransformer(MIT_DIMS["b2"], MIT_DEPTHS["b2"], MIT_HEADS, drop_path=drop_path)
    return _composite(encoder, LastStageMLPDecoder(MIT_DIMS["b2"][-1], num_classes, decoder_dim),
                      num_classes=num_classes, encoder_name="mit_b2", decoder_name=f"mlp_s4_c{decoder_dim}",
                      output_stride=4, patch_size=4, crop_size=crop_size)
