"""SETR (Zheng et al., CVPR 2021): a plain ViT encoder with a naive (Naive), progressive
upsampling (PUP) or multi-level feature aggregation (MLA) decoder, plus auxiliary heads
used in training only.

Module names mirror the official repository (fudan-zvg/SETR, mmseg 0.x format), so its
checkpoints load through a prefix rename (``backbone.`` -> ``encoder.``, ``decode_head.``
-> ``decoder.``, ``auxiliary_head.N.`` -> ``aux_heads.N.``):

- encoder: ``patch_embed.proj, cls_token, pos_embed, blocks.N.*`` (qkv bias, LayerNorm
  eps 1e-6, no final norm, no classifier); MLA adds ``norm_0..3`` and the neck ``mla.*``;
- Naive / PUP decoder and their auxiliary heads: ``norm, conv_i, syncbn_fc_i``
  (``VisionTransformerUpHead``); MLA: ``mlahead.head2..5, cls`` (``VIT_MLAHead``) and
  auxiliary ``aux`` (``VIT_MLA_AUXIHead``).

Every official head also holds an unused ``conv_seg`` (mmseg's BaseDecodeHead): left out
here, reported as ignored when loading. Batch norms are plain ``BatchNorm2d`` (the paper
uses synchronised BN; training converts them when it runs distributed).

Faithful details (official code): Naive and PUP keep the cls token through the blocks and
drop it in the head; MLA drops it before the blocks and taps the outputs of blocks
L/4, L/2, 3L/4, L. Auxiliary heads (loss weight 0.4, Sec. 4.1) tap Z10, Z15, Z20 (Naive)
and Z10, Z15, Z20, Z24 (PUP) of T-Large, the four MLA outputs for MLA; T-Base uses the
official configs' Z3, Z6, Z9 (Naive) and Z5, Z8, Z10, Z12 (PUP, from the DeiT config).

``forward(x)`` returns logits at the input resolution; ``forward(x, with_aux=True)``
returns ``(logits, [aux_logits, ...])`` (DDP-safe: it goes through ``forward``).

Variant names: ``setr_{encoder}{patch}_{decoder}``: encoder ``b`` / ``l`` (T-Base /
T-Large, ViT ImageNet-21k weights) or ``deit_b`` (T-Base with DeiT weights, SETR-*-DeiT;
the same architecture, no distillation token); decoder ``naive`` / ``pup`` / ``mla``;
``setr_micro_p16_*`` are tiny encoders for the CPU quickstart. Default crop 512 (ADE20K);
``crop_size=`` builds the position embeddings for another crop (Cityscapes: 768).
"""
from __future__ import annotations

from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import PatchEmbed, trunc_normal_

from segbench.models import IMAGENET_MEAN, IMAGENET_STD, Family, ModelInfo, register_family, register_model
from segbench.models.segmenter import init_linear_and_norm, resize_pos_embed, tokens_to_map, vit_blocks

LayerNorm = partial(nn.LayerNorm, eps=1e-6)


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int, bias: bool = False) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class SETRViT(nn.Module):
    """SETR's ViT: returns the feature maps (B, C, h, w) after the blocks in ``out_indices``."""

    def __init__(self, img_size: int, patch_size: int, dim: int, depth: int, heads: int,
                 out_indices: tuple[int, ...], drop_path: float = 0.0, cls_through_blocks: bool = True):
        super().__init__()
        self.patch_size, self.dim = patch_size, dim
        self.grid = (img_size // patch_size, img_size // patch_size)
        self.out_indices = tuple(out_indices)
        self.cls_through_blocks = cls_through_blocks
        self.patch_embed = PatchEmbed(img_size, patch_size, 3, dim, strict_img_size=False)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid[0] * self.grid[1] + 1, dim))
        self.blocks = vit_blocks(dim, depth, heads, drop_path, norm_layer=LayerNorm)
        trunc_normal_(self.pos_embed, std=0.02)
        trunc_normal_(self.cls_token, std=0.02)
        self.apply(init_linear_and_norm)

    def tokens(self, x: torch.Tensor) -> tuple[list[torch.Tensor], tuple[int, int]]:
        """Patch tokens (cls removed) after each block in ``out_indices``, and the grid."""
        grid = (x.shape[2] // self.patch_size, x.shape[3] // self.patch_size)
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + resize_pos_embed(self.pos_embed, grid, 1, self.grid)
        skip = 1
        if not self.cls_through_blocks:  # MLA: the cls token never enters the blocks
            x, skip = x[:, 1:], 0
        outs = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.out_indices:
                outs.append(x[:, skip:])
        return outs, grid

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs, grid = self.tokens(x)
        return [tokens_to_map(t, grid) for t in outs]


class MLANeck(nn.Module):
    """SETR-MLA's aggregation (``Conv_MLA``): per input 1x1 conv, top-down sums, 3x3 conv.

    Inputs are maps of equal size for SETR; for a feature pyramid (e.g. MiT in SegFormer
    Table 3) each sum resizes the coarser map to the finer one first.
    """

    def __init__(self, in_channels: list[int], channels: int = 256):
        super().__init__()
        for level, c in zip((2, 3, 4, 5), in_channels):
            self.add_module(f"mla_p{level}_1x1", conv_bn_relu(c, channels, 1))
            self.add_module(f"mla_p{level}", conv_bn_relu(channels, channels, 3))

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        lateral = [getattr(self, f"mla_p{level}_1x1")(f) for level, f in zip((2, 3, 4, 5), features)]
        summed = [lateral[3]]
        for lat in reversed(lateral[:3]):  # p5 -> p4 -> p3 -> p2
            top = summed[0]
            if top.shape[2:] != lat.shape[2:]:
                top = F.interpolate(top, size=lat.shape[2:], mode="bilinear", align_corners=False)
            summed.insert(0, top + lat)
        return [getattr(self, f"mla_p{level}")(s) for level, s in zip((2, 3, 4, 5), summed)]


class SETRMLAEncoder(SETRViT):
    """The official ``VIT_MLA`` backbone: ViT taps, one LayerNorm each, then the MLA neck."""

    def __init__(self, img_size: int, patch_size: int, dim: int, depth: int, heads: int,
                 out_indices: tuple[int, ...], mla_channels: int = 256, drop_path: float = 0.0):
        super().__init__(img_size, patch_size, dim, depth, heads, out_indices, drop_path, cls_through_blocks=False)
        for i in range(len(out_indices)):
            self.add_module(f"norm_{i}", LayerNorm(dim))
        self.mla = MLANeck([dim] * len(out_indices), mla_channels)  # PyTorch's default conv init, as official

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs, grid = self.tokens(x)
        return self.mla([tokens_to_map(getattr(self, f"norm_{i}")(t), grid) for i, t in enumerate(outs)])


class UpHead(nn.Module):
    """SETR's Naive and PUP heads (``VisionTransformerUpHead``), also their auxiliary heads.

    LayerNorm over channels, then for each ``scales[i]``: conv (``kernel_size``, bias, as
    the official code) + BN + ReLU and an ``x scales[i]`` bilinear upsampling; a 1x1
    classifier; a final bilinear resize to the output size. Naive: ``scales=(1,)`` with
    1x1 convs; PUP: ``(2, 2, 2, 1)`` with 3x3 convs (the fourth x2 comes after the
    classifier); PUP's auxiliary heads: ``(4,)`` with a 3x3 conv.
    """

    def __init__(self, in_channels: int, num_classes: int, scales: tuple[int, ...], kernel_size: int,
                 channels: int = 256, in_index: int = -1):
        super().__init__()
        self.scales, self.in_index = tuple(scales), in_index
        self.norm = LayerNorm(in_channels)
        for i in range(len(scales)):
            self.add_module(f"conv_{i}", nn.Conv2d(in_channels if i == 0 else channels, channels, kernel_size,
                                                   padding=kernel_size // 2))
            self.add_module(f"syncbn_fc_{i}", nn.BatchNorm2d(channels))
        self.add_module(f"conv_{len(scales)}", nn.Conv2d(channels, num_classes, 1))
        self.apply(init_linear_and_norm)

    def forward(self, features: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        x = self.norm(features[self.in_index].permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        for i, scale in enumerate(self.scales):
            x = F.relu(getattr(self, f"syncbn_fc_{i}")(getattr(self, f"conv_{i}")(x)), inplace=True)
            if scale != 1:
                x = F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
        x = getattr(self, f"conv_{len(self.scales)}")(x)
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class MLAHead(nn.Module):
    """SETR-MLA's head (``VIT_MLAHead``): per stream 2 x (3x3 conv + BN + ReLU) and x4
    upsampling (align_corners=True, as the official code), concatenation, a 3x3 classifier,
    bilinear resize to the output size. Streams of a pyramid are upsampled to ``upsample``
    times the first stream's size: 4 for SETR's 1/16 maps (the classifier runs at 1/4), 1 for
    a pyramid whose first map is already at 1/4 (MiT + MLA, SegFormer Table 3)."""

    def __init__(self, in_channels: int, num_classes: int, channels: int = 128, num_streams: int = 4,
                 upsample: int = 4):
        super().__init__()
        self.upsample = upsample
        self.mlahead = nn.ModuleDict({
            f"head{level}": nn.Sequential(*conv_bn_relu(in_channels, channels, 3), *conv_bn_relu(channels, channels, 3))
            for level in range(2, 2 + num_streams)
        })
        self.cls = nn.Conv2d(num_streams * channels, num_classes, 3, padding=1)

    def forward(self, features: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        target = (features[0].shape[2] * self.upsample, features[0].shape[3] * self.upsample)
        streams = [F.interpolate(head(f), size=target, mode="bilinear", align_corners=True)
                   for head, f in zip(self.mlahead.values(), features)]
        x = self.cls(torch.cat(streams, dim=1))
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class MLAAuxHead(nn.Module):
    """SETR-MLA's auxiliary head (``VIT_MLA_AUXIHead`` on 256 channels): one 1x1 conv, no bias."""

    def __init__(self, in_channels: int, num_classes: int, in_index: int):
        super().__init__()
        self.in_index = in_index
        self.aux = nn.Conv2d(in_channels, num_classes, 1, bias=False)

    def forward(self, features: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        return F.interpolate(self.aux(features[self.in_index]), size=size, mode="bilinear", align_corners=False)


class SETR(nn.Module):
    """Encoder -> feature maps -> decoder (and, with ``with_aux=True``, the auxiliary heads)."""

    def __init__(self, encoder: SETRViT, decoder: nn.Module, aux_heads: list[nn.Module], info: ModelInfo):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.aux_heads = nn.ModuleList(aux_heads)
        self.info = info

    def forward(self, x: torch.Tensor, with_aux: bool = False):
        height, width = x.shape[2:]
        p = self.encoder.patch_size
        x = F.pad(x, (0, -width % p, 0, -height % p))  # the official code needs crop-sized inputs
        features = self.encoder(x)
        size = x.shape[2:]
        logits = self.decoder(features, size)[:, :, :height, :width]
        if not with_aux:
            return logits
        return logits, [head(features, size)[:, :, :height, :width] for head in self.aux_heads]


def _setr(num_classes: int, *, encoder: str, decoder: str, dim: int, depth: int, heads: int,
          aux_taps: tuple[int, ...], patch_size: int = 16, crop_size: int = 512, drop_path: float = 0.0,
          up_channels: int = 256, mla_channels: int = 256, mla_head_channels: int = 128) -> SETR:
    """``aux_taps``: 0-based block indices of the auxiliary heads (Naive / PUP)."""
    if decoder == "mla":
        taps = tuple(depth * (i + 1) // 4 - 1 for i in range(4))  # blocks L/4, L/2, 3L/4, L
        enc = SETRMLAEncoder(crop_size, patch_size, dim, depth, heads, taps, mla_channels, drop_path)
        dec = MLAHead(mla_channels, num_classes, mla_head_channels)
        aux = [MLAAuxHead(mla_channels, num_classes, in_index=i) for i in range(4)]
    else:
        taps = tuple(sorted(set(aux_taps) | {depth - 1}))
        enc = SETRViT(crop_size, patch_size, dim, depth, heads, taps, drop_path)
        if decoder == "naive":
            dec = UpHead(dim, num_classes, scales=(1,), kernel_size=1, channels=up_channels)
            aux = [UpHead(dim, num_classes, scales=(1,), kernel_size=1, channels=up_channels, in_index=taps.index(t))
                   for t in aux_taps]
        else:
            dec = UpHead(dim, num_classes, scales=(2, 2, 2, 1), kernel_size=3, channels=up_channels)
            aux = [UpHead(dim, num_classes, scales=(4,), kernel_size=3, channels=up_channels, in_index=taps.index(t))
                   for t in aux_taps]
    info = ModelInfo(name="", family="setr", encoder=encoder, decoder=decoder, num_classes=num_classes,
                     patch_size=patch_size, output_stride=1, crop_size=crop_size, mean=IMAGENET_MEAN,
                     std=IMAGENET_STD, test_mode="slide")
    return SETR(enc, dec, aux, info)


# --- variants -------------------------------------------------------------------------
# SETR Table 1 encoders; Table 2 variants. Auxiliary taps from the official configs
# (0-based block indices = the configs' in_index).

T_LARGE = dict(dim=1024, depth=24, heads=16)
T_BASE = dict(dim=768, depth=12, heads=12)
NAIVE_L_AUX, PUP_L_AUX = (9, 14, 19), (9, 14, 19, 23)  # Z10, Z15, Z20 (, Z24): Sec. 4.1
NAIVE_B_AUX, PUP_B_AUX = (2, 5, 8), (4, 7, 9, 11)  # SETR_Naive_Base / SETR_PUP_DeiT configs


register_family(Family("setr", recipe="setr", drop_path=True, imagenet_vit_encoder=True))


@register_model
def setr_l16_naive(num_classes: int, **kw) -> SETR:
    return _setr(num_classes, encoder="vit_l16", decoder="naive", aux_taps=NAIVE_L_AUX, **T_LARGE, **kw)


@register_model
def setr_l16_pup(num_classes: int, **kw) -> SETR:
    return _setr(num_classes, encoder="vit_l16", decoder="pup", aux_taps=PUP_L_AUX, **T_LARGE, **kw)


@register_model
def setr_l16_mla(num_classes: int, **kw) -> SETR:
    return _setr(num_classes, encoder="vit_l16", decoder="mla", aux_taps=(), **T_LARGE, **kw)


@register_model
def setr_b16_naive(num_classes: int, **kw) -> SETR:
    return _setr(num_classes, encoder="vit_b16", decoder="naive", aux_taps=NAIVE_B_AUX, **T_BASE, **kw)


@register_model
def setr_b16_pup(num_classes: int, **kw) -> SETR:
    return _setr(num_classes, encoder="vit_b16", decoder="pup", aux_taps=PUP_B_AUX, **T_BASE, **kw)


@register_model
def setr_b16_mla(num_classes: int, **kw) -> SETR:
    return _setr(num_classes, encoder="vit_b16", decoder="mla", aux_taps=(), **T_BASE, **kw)


@register_model
def setr_deit_b16_naive(num_classes: int, **kw) -> SETR:
    return _setr(num_classes, encoder="deit_b16", decoder="naive", aux_taps=NAIVE_B_AUX, **T_BASE, **kw)


@register_model
def setr_deit_b16_pup(num_classes: int, **kw) -> SETR:
    return _setr(num_classes, encoder="deit_b16", decoder="pup", aux_taps=PUP_B_AUX, **T_BASE, **kw)


@register_model
def setr_deit_b16_mla(num_classes: int, **kw) -> SETR:
    return _setr(num_classes, encoder="deit_b16", decoder="mla", aux_taps=(), **T_BASE, **kw)


# Tiny encoders for the synthetic quickstart (128 px, CPU): depth 4, auxiliary heads on Z2, Z3 (, Z4).
SETR_MICRO = dict(dim=64, depth=4, heads=2, crop_size=128, up_channels=32, mla_channels=32, mla_head_channels=16)


@register_model
def setr_micro_p16_naive(num_classes: int, **kw) -> SETR:
    return _setr(num_classes, encoder="vit_micro_p16", decoder="naive", aux_taps=(1, 2), **{**SETR_MICRO, **kw})


@register_model
def setr_micro_p16_pup(num_classes: int, **kw) -> SETR:
    return _setr(num_classes, encoder="vit_micro_p16", decoder="pup", aux_taps=(1, 2, 3), **{**SETR_MICRO, **kw})


@register_model
def setr_micro_p16_mla(num_classes: int, **kw) -> SETR:
    return _setr(num_classes, encoder="vit_micro_p16", decoder="mla", aux_taps=(), **{**SETR_MICRO, **kw})
