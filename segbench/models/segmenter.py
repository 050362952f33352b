"""Segmenter (Strudel et al., ICCV 2021): a plain ViT encoder and a linear or
mask-transformer decoder.

Parameter names follow the official repository (rstrudel/segmenter), so its
``checkpoint.pth`` files load without renaming: ``encoder.{patch_embed.proj, cls_token,
pos_embed, blocks.N.*, norm}`` (+ ``dist_token`` for DeiT) and ``decoder.head`` or
``decoder.{cls_emb, proj_dec, proj_patch, proj_classes, blocks.N.*, decoder_norm,
mask_norm}``. The official code uses ``nn.LayerNorm`` with its default eps (1e-5), unlike
timm's ViT (1e-6). The official encoder also carries its ImageNet classifier
(``encoder.head``, ``encoder.head_dist``), which segmentation never uses: it is left out
here, and the checkpoint loader reports those keys as ignored.

Variant names: ``segmenter_{encoder}{patch}_{decoder}[_{crop}]``

- encoder: ``t`` / ``s`` / ``b`` / ``l`` (ViT-Ti/S/B/L, augreg ImageNet-21k weights,
  mean = std = 0.5) or ``deit_t`` / ``deit_s`` / ``deit_b`` (DeiT-Ti/S/B distilled, the
  official config.yml's DeiT backbones, Seg-B-dagger for B: ImageNet mean/std rounded as the
  official code rounds them, a distillation token and N + 2 position embeddings);
- patch: 8, 16 or 32, where the paper has them (Table 3);
- decoder: ``linear``, ``mask`` (mask transformer, 2 layers) or ``mask1`` (1 layer, the
  Cityscapes Seg-L-Mask/16 of Sec. 4.4);
- crop: the training crop when it is not ADE20K's 512 (Seg-L-Mask/16 at 640, Table 6;
  Cityscapes 768). Every variant runs at any input size and takes ``crop_size=`` to build
  its position embeddings for another crop (the checkpoint loader does this).

``segmenter_micro_p{patch}_{decoder}`` are tiny encoders for the CPU quickstart.
"""
from __future__ import annotations

import math
from functools import partial

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import PatchEmbed, trunc_normal_
from timm.models.vision_transformer import Block

from segbench.models import VIT_MEAN, VIT_STD, Family, ModelInfo, register_family, register_model

LayerNorm = partial(nn.LayerNorm, eps=1e-5)


def resize_pos_embed(pos_embed: torch.Tensor, new_grid: tuple[int, int], num_extra_tokens: int,
                     old_grid: tuple[int, int] | None = None) -> torch.Tensor:
    """Bilinearly resample the grid part of a ViT position embedding; extra tokens kept."""
    extra, grid = pos_embed[:, :num_extra_tokens], pos_embed[:, num_extra_tokens:]
    if old_grid is None:
        side = math.isqrt(grid.shape[1])
        old_grid = (side, side)
    if tuple(old_grid) == tuple(new_grid):
        return pos_embed
    grid = grid.reshape(1, old_grid[0], old_grid[1], -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=new_grid, mode="bilinear", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], -1)
    return torch.cat([extra, grid], dim=1)


def tokens_to_map(x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """(B, H*W, C) -> (B, C, H, W), a channels-last view of the same memory (no copy).

    Convolutions and bilinear resizing on it run channels-last and return channels-last
    maps, which ``map_to_tokens`` turns back into tokens without a copy either. (A map whose
    strides are not canonical channels-last, e.g. ``x.transpose(1, 2).reshape(...)`` at
    batch 1, sends them down PyTorch's channels-first path with copies in and out: on CPU a
    depthwise convolution ten times slower, a 150-class upsampling to 512 x 512 six times.)
    """
    return x.reshape(x.shape[0], hw[0], hw[1], x.shape[2]).permute(0, 3, 1, 2)


def map_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H*W, C): a view for a channels-last map, a copy otherwise."""
    return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, x.shape[1])


def init_linear_and_norm(module: nn.Module) -> None:
    """The official initialisation: truncated normal (0.02) linears, unit LayerNorms."""
    if isinstance(module, nn.Linear) and module.weight.is_meta:
        return  # nothing to initialise on the meta device (`segbench models` builds there: keep it fast)
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def vit_blocks(dim: int, depth: int, heads: int, drop_path: float, dropout: float = 0.0,
               norm_layer=LayerNorm) -> nn.ModuleList:
    """Pre-norm ViT blocks (qkv bias, MLP ratio 4) with linearly increasing drop-path rates."""
    rates = [drop_path * i / max(depth - 1, 1) for i in range(depth)]  # linear, as torch.linspace
    return nn.ModuleList(
        Block(dim, heads, mlp_ratio=4.0, qkv_bias=True, proj_drop=dropout, attn_drop=dropout,
              drop_path=rate, norm_layer=norm_layer)
        for rate in rates
    )


class ViTEncoder(nn.Module):
    """ViT / DeiT encoder returning the final-normed token sequence (extra tokens first)."""

    def __init__(self, img_size: int, patch_size: int, dim: int, depth: int, heads: int,
                 distilled: bool = False, drop_path: float = 0.1):
        super().__init__()
        self.patch_size = patch_size
        self.grid = (img_size // patch_size, img_size // patch_size)
        self.num_extra_tokens = 2 if distilled else 1
        self.patch_embed = PatchEmbed(img_size, patch_size, 3, dim, strict_img_size=False)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.dist_token = nn.Parameter(torch.zeros(1, 1, dim)) if distilled else None
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid[0] * self.grid[1] + self.num_extra_tokens, dim))
        self.blocks = vit_blocks(dim, depth, heads, drop_path)
        self.norm = LayerNorm(dim)
        trunc_normal_(self.pos_embed, std=0.02)
        trunc_normal_(self.cls_token, std=0.02)
        if self.dist_token is not None:
            trunc_normal_(self.dist_token, std=0.02)
        self.apply(init_linear_and_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid = (x.shape[2] // self.patch_size, x.shape[3] // self.patch_size)
        x = self.patch_embed(x)
        extra = [self.cls_token] + ([self.dist_token] if self.dist_token is not None else [])
        x = torch.cat([t.expand(x.shape[0], -1, -1) for t in extra] + [x], dim=1)
        x = x + resize_pos_embed(self.pos_embed, grid, self.num_extra_tokens, self.grid)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


class LinearDecoder(nn.Module):
    """One linear map from each patch encoding to class logits."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.head = nn.Linear(dim, num_classes)
        self.apply(init_linear_and_norm)

    def forward(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        return tokens_to_map(self.head(tokens), grid)


class MaskTransformer(nn.Module):
    """Class embeddings decoded jointly with the patches; masks = <patch, class> (Eq. 4)."""

    def __init__(self, enc_dim: int, num_classes: int, depth: int = 2, dropout: float = 0.1):
        super().__init__()
        dim = enc_dim  # the paper: "the same token and hidden size as the encoder"
        self.num_classes = num_classes
        self.proj_dec = nn.Linear(enc_dim, dim)
        self.blocks = vit_blocks(dim, depth, dim // 64 or 1, drop_path=0.0, dropout=dropout)
        self.cls_emb = nn.Parameter(torch.zeros(1, num_classes, dim))
        self.proj_patch = nn.Parameter(dim ** -0.5 * torch.randn(dim, dim))
        self.proj_classes = nn.Parameter(dim ** -0.5 * torch.randn(dim, dim))
        self.decoder_norm = LayerNorm(dim)
        self.mask_norm = LayerNorm(num_classes)
        self.apply(init_linear_and_norm)
        trunc_normal_(self.cls_emb, std=0.02)

    def forward(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        x = self.proj_dec(tokens)
        x = torch.cat([x, self.cls_emb.expand(x.shape[0], -1, -1)], dim=1)
        for block in self.blocks:
            x = block(x)
        x = self.decoder_norm(x)
        patches = F.normalize(x[:, : -self.num_classes] @ self.proj_patch, dim=-1)
        classes = F.normalize(x[:, -self.num_classes:] @ self.proj_classes, dim=-1)
        return tokens_to_map(self.mask_norm(patches @ classes.transpose(1, 2)), grid)


class Segmenter(nn.Module):
    def __init__(self, encoder: ViTEncoder, decoder: nn.Module, info: ModelInfo):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.info = info

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[2:]
        p = self.encoder.patch_size
        x = F.pad(x, (0, -width % p, 0, -height % p))  # zero padding, as the official code
        grid = (x.shape[2] // p, x.shape[3] // p)
        tokens = self.encoder(x)[:, self.encoder.num_extra_tokens:]
        masks = self.decoder(tokens, grid)
        masks = F.interpolate(masks, size=x.shape[2:], mode="bilinear", align_corners=False)
        return masks[:, :, :height, :width]


def _segmenter(num_classes: int, *, encoder: str, patch_size: int, dim: int, depth: int, heads: int,
               decoder: str, crop_size: int = 512, distilled: bool = False, drop_path: float = 0.1,
               mean=VIT_MEAN, std=VIT_STD) -> Segmenter:
    """``decoder``: "linear", "mask" (2-layer mask transformer) or "mask1" (1 layer)."""
    enc = ViTEncoder(crop_size, patch_size, dim, depth, heads, distilled=distilled, drop_path=drop_path)
    if decoder == "linear":
        dec = LinearDecoder(dim, num_classes)
    else:
        dec = MaskTransformer(dim, num_classes, depth={"mask": 2, "mask1": 1}[decoder])
    info = ModelInfo(name="", family="segmenter", encoder=encoder, decoder=decoder, num_classes=num_classes,
                     patch_size=patch_size, output_stride=1, crop_size=crop_size, mean=mean, std=std,
                     test_mode="slide")
    return Segmenter(enc, dec, info)


# --- variants -------------------------------------------------------------------------
# Encoders of Segmenter Table 1 (head size 64, MLP ratio 4); which (encoder, patch, decoder)
# the paper trains: Table 3 (linear), Table 4 (mask), Table 6 and the official model zoo.

VIT_T = dict(dim=192, depth=12, heads=3)
VIT_S = dict(dim=384, depth=12, heads=6)
VIT_B = dict(dim=768, depth=12, heads=12)
VIT_L = dict(dim=1024, depth=24, heads=16)
# rstrudel/segmenter segm/data/base.py normalises with np.round(255 * stats, 2) of the DeiT
# ImageNet statistics (segm/data/utils.py STATS["deit"]): these, not mmseg's 123.675 / 58.395.
DEIT_MEAN = tuple(float(v) for v in np.round(255 * np.array((0.485, 0.456, 0.406)), 2))  # 123.68, 116.28, 103.53
DEIT_STD = tuple(float(v) for v in np.round(255 * np.array((0.229, 0.224, 0.225)), 2))  # 58.4, 57.12, 57.38
DEIT = dict(distilled=True, mean=DEIT_MEAN, std=DEIT_STD)
DEIT_T = dict(VIT_T, **DEIT)  # config.yml deit_tiny_distilled_patch16_224
DEIT_S = dict(VIT_S, **DEIT)  # config.yml deit_small_distilled_patch16_224
DEIT_B = dict(VIT_B, **DEIT)  # config.yml deit_base_distilled_patch16_384


register_family(Family("segmenter", recipe="segmenter", drop_path=True, imagenet_vit_encoder=True))


@register_model
def segmenter_t16_linear(num_classes: int, **kw) -> Segmenter:
    return _segmenter(num_classes, encoder="vit_t16", patch_size=16, decoder="linear", **VIT_T, **kw)


@register_model
def segmenter_t16_mask(num_classes: int, **kw) -> Segmenter:
    return _segmenter(num_classes, encoder="vit_t16", patch_size=16, decoder="mask", **VIT_T, **kw)


@register_model
def segmenter_s32_linear(num_classes: int, **kw) -> Segmenter:
    return _segmenter(num_classes, encoder="vit_s32", patch_size=32, decoder="linear", **VIT_S, **kw)


@register_model
def segmenter_s16_linear(num_classes: int, **kw) -> Segmenter:
    return _segmenter(num_classes, encoder="vit_s16", patch_size=16, decoder="linear", **VIT_S, **kw)


@register_model
def segmenter_s16_mask(num_classes: int, **kw) -> Segmenter:
    return _segmenter(num_classes, encoder="vit_s16", patch_size=16, decoder="mask", **VIT_S, **kw)


@register_model
def segmenter_b32_linear(num_classes: int, **kw) -> Segmenter:
    return _segmenter(num_classes, encoder="vit_b32", patch_size=32, decoder="linear", **VIT_B, **kw)


@register_model
def segmenter_b32_mask(num_classes: int, **kw) -> Segmenter:
    return _segmenter(num_classes, encoder="vit_b32", patch_size=32, decoder="mask", **VIT_B, **kw)


@register_model
def segmenter_b16_linear(num_classes: int, **kw) -> Segmenter:
    return _segmenter(num_classes, encoder="vit_b16", patch_size=16, decoder="linear", **VIT_B, **kw)


@register_model
def segmenter_b16_mask(num_classes: int, **kw) -> Segmenter:
    return _segmenter(num_classes, encoder="vit_b16", patch_size=16, decoder="mask", **VIT_B, **kw)


@register_model
def segmenter_b8_linear(num_classes: int, **kw) -> Segmenter:
    return _segmenter(num_classes, encoder="vit_b8", patch_size=8, decoder="linear", **VIT_B, **kw)


@register_model
def segmenter_deit_t16_linear(num_classes: int, **kw) -> Segmenter:
    return _segmenter(num_classes, encoder="deit_t16", patch_size=16, decoder="linear", **DEIT_T, **kw)


@register_model
def segmenter_deit_t16_mask(num_classes: int, **kw) -> Segmenter:
    return _segmenter(num_classes, encoder="deit_t16", patch_size=16, decoder="mask", **DEIT_T, **kw)


@register_model
def segmenter_deit_s16_linear(num_classes: int, **kw) -> Segmenter:
    return _segmenter(num_classes, encoder="deit_s16", patch_size=16, decoder="linear", **DEIT_S, **kw)


@register_model
def segmenter_deit_s16_mask(num_classes: int, **kw) -> Segmenter:
    return _segmenter(num_classes, encoder="deit_s16", patch_size=16, decoder="mask", **DEIT_S, **kw)


@register_model
def segmenter_deit_b16_linear(num_classes: int, **kw) -> Segmenter:
    return _segmenter(num_classes, encoder="deit_b16", patch_size=16, decoder="linear", **DEIT_B, **kw)


@register_model
def segmenter_deit_b16_mask(num_classes: int, **kw) -> Segmenter:
    return _segmenter(num_classes, encoder="deit_b16", patch_size=16, decoder="mask", **DEIT_B, **kw)


@register_model
def segmenter_l16_linear(num_classes: int, **kw) -> Segmenter:
    return _segmenter(num_classes, encoder="vit_l16", patch_size=16, decoder="linear", **VIT_L, **kw)


@register_model
def segmenter_l16_mask(num_classes: int, **kw) -> Segmenter:
    return _segmenter(num_classes, encoder="vit_l16", patch_size=16, decoder="mask", **VIT_L, **kw)


@register_model
def segmenter_l16_mask_640(num_classes: int, crop_size: int = 640, **kw) -> Segmenter:
    # ADE20K's best model (Table 6, "trained with a resolution of 640x640", Sec. 4.2).
    return _segmenter(num_classes, encoder="vit_l16", patch_size=16, decoder="mask", crop_size=crop_size,
                      **VIT_L, **kw)


@register_model
def segmenter_l16_mask1_768(num_classes: int, crop_size: int = 768, **kw) -> Segmenter:
    # Cityscapes (Sec. 4.4, Table 8): one decoder layer, "as two layers did not fit into memory".
    return _segmenter(num_classes, encoder="vit_l16", patch_size=16, decoder="mask1", crop_size=crop_size,
                      **VIT_L, **kw)


# Tiny encoders for the synthetic quickstart (128 px images, CPU training in seconds).
VIT_MICRO = dict(dim=64, depth=4, heads=2, crop_size=128)


@register_model
def segmenter_micro_p8_linear(num_classes: int, **kw) -> Segmenter:
    return _segmenter(num_classes, encoder="vit_micro_p8", patch_size=8, decoder="linear", **{**VIT_MICRO, **kw})


@register_model
def segmenter_micro_p8_mask(num_classes: int, **kw) -> Segmenter:
    return _segmenter(num_classes, encoder="vit_micro_p8", patch_size=8, decoder="mask", **{**VIT_MICRO, **kw})


@register_model
def segmenter_micro_p32_linear(num_classes: int, **kw) -> Segmenter:
    return _segmenter(num_classes, encoder="vit_micro_p32", patch_size=32, decoder="linear", **{**VIT_MICRO, **kw})
