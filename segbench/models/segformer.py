"""SegFormer (Xie et al., NeurIPS 2021): a hierarchical Mix Transformer (MiT) encoder and
a lightweight All-MLP decoder.

Module names follow the official code (NVlabs/SegFormer, mmseg 0.x) under segbench's
top-level prefixes, so an official checkpoint loads after renaming ``backbone.`` to
``encoder.`` and ``decode_head.`` to ``decoder.``: ``encoder.patch_embed{1-4}.{proj,norm}``,
``encoder.block{1-4}.N.{norm1, attn.{q,kv,sr,norm,proj}, norm2, mlp.{fc1,dwconv.dwconv,fc2}}``,
``encoder.norm{1-4}``, ``decoder.linear_c{1-4}.proj``, ``decoder.linear_fuse.{conv,bn}``,
``decoder.linear_pred``. Official files also hold ``decode_head.conv_seg``, a layer the
SegFormer head never uses; we do not build it.

Layer-norm epsilons follow the official code: 1e-6 in the blocks and after each stage,
PyTorch's default 1e-5 in the patch embeddings and the attention's spatial reduction.
HuggingFace transformers uses 1e-5 everywhere; ``segformer_from_hf_config`` builds the
model that way, to reproduce its numbers.
"""
from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import ConvNormAct, DropPath

from segbench.models import Family, ModelInfo, register_family, register_model
from segbench.models.segmenter import init_linear_and_norm, map_to_tokens, tokens_to_map


def init_official(module: nn.Module) -> None:
    """MiT's initialisation: truncated normal (0.02) linears, unit LayerNorms (as ViT's),
    He-normal (fan-out) convolutions."""
    if getattr(module, "weight", None) is not None and module.weight.is_meta:
        return  # built on the meta device (describe_models): nothing to initialise
    if isinstance(module, nn.Conv2d):
        fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
        nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    else:
        init_linear_and_norm(module)


class OverlapPatchEmbed(nn.Module):
    """Strided convolution with overlapping windows (kernel 7 stride 4, or 3 stride 2), then LayerNorm."""

    def __init__(self, in_dim: int, dim: int, kernel: int, stride: int):
        super().__init__()
        self.proj = nn.Conv2d(in_dim, dim, kernel, stride, padding=kernel // 2)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        x = self.proj(x.contiguous(memory_format=torch.channels_last))  # no-op after the first stage
        return self.norm(map_to_tokens(x)), (x.shape[2], x.shape[3])


class EfficientSelfAttention(nn.Module):
    """Multi-head attention whose keys and values come from a sequence shortened by
    ``sr_ratio``**2 (a strided convolution + LayerNorm), Eq. 2 of the paper."""

    def __init__(self, dim: int, heads: int, sr_ratio: int):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)  # keys are the first `dim` outputs, values the rest
        self.proj = nn.Linear(dim, dim)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, sr_ratio, sr_ratio)
            self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        batch, length, dim = x.shape
        q = self.q(x).reshape(batch, length, self.heads, -1).transpose(1, 2)
        if self.sr_ratio > 1:
            x = self.norm(map_to_tokens(self.sr(tokens_to_map(x, hw))))
        k, v = self.kv(x).reshape(batch, x.shape[1], 2, self.heads, -1).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(batch, length, dim))


class DWConv(nn.Module):
    """3x3 depthwise convolution over the token map (wrapped to keep the official name
    ``mlp.dwconv.dwconv``)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        return map_to_tokens(self.dwconv(tokens_to_map(x, hw)))


class MixFFN(nn.Module):
    """fc1 -> depthwise 3x3 conv -> GELU -> fc2 (Eq. 3): the convolution leaks the position
    information that replaces position embeddings."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = DWConv(hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        return self.fc2(self.act(self.dwconv(self.fc1(x), hw)))


class MiTBlock(nn.Module):
    def __init__(self, dim: int, heads: int, sr_ratio: int, mlp_ratio: float, drop_path: float,
                 norm_eps: float = 1e-6):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = EfficientSelfAttention(dim, heads, sr_ratio)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = MixFFN(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), hw))
        return x + self.drop_path(self.mlp(self.norm2(x), hw))


class MixVisionTransformer(nn.Module):
    """MiT encoder: four stages at strides 4, 8, 16, 32; returns the four feature maps."""

    def __init__(self, dims: Sequence[int], depths: Sequence[int], heads: Sequence[int],
                 sr_ratios: Sequence[int] = (8, 4, 2, 1), mlp_ratios: Sequence[float] = (4, 4, 4, 4),
                 drop_path: float = 0.1, norm_eps: float = 1e-6):
        super().__init__()
        self.dims = tuple(dims)
        self.num_stages = len(dims)
        total = sum(depths)
        rates = [drop_path * i / max(total - 1, 1) for i in range(total)]  # linear decay, as torch.linspace
        for i in range(self.num_stages):
            in_dim = 3 if i == 0 else dims[i - 1]
            kernel, stride = (7, 4) if i == 0 else (3, 2)
            start = sum(depths[:i])
            self.add_module(f"patch_embed{i + 1}", OverlapPatchEmbed(in_dim, dims[i], kernel, stride))
            self.add_module(f"block{i + 1}", nn.ModuleList(
                MiTBlock(dims[i], heads[i], sr_ratios[i], mlp_ratios[i], rates[start + j], norm_eps)
                for j in range(depths[i])))
            self.add_module(f"norm{i + 1}", nn.LayerNorm(dims[i], eps=norm_eps))
        self.apply(init_official)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for i in range(1, self.num_stages + 1):
            x, hw = getattr(self, f"patch_embed{i}")(x)
            for block in getattr(self, f"block{i}"):
                x = block(x, hw)
            x = tokens_to_map(getattr(self, f"norm{i}")(x), hw)
            features.append(x)
        return features


class LinearEmbed(nn.Module):
    """A per-pixel linear map (``.proj``, as the official ``MLP`` module)."""

    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.proj = nn.Linear(in_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return tokens_to_map(self.proj(map_to_tokens(x)), x.shape[2:])


class AllMLPDecoder(nn.Module):
    """The All-MLP decoder (Sec. 3.2): each input map is projected to ``dim`` channels
    (``linear_c{i}``), upsampled to the first input's size, concatenated deepest first,
    fused by a 1x1 conv + BN + ReLU (``linear_fuse``) and classified (``linear_pred``).

    ``in_channels`` lists the channels of the input maps, shallowest first, so any encoder
    with a list of feature maps can use it (SegFormer Table 3 pairs it with ViT-L).

    In eval mode ``forward_fused`` computes the same function with less work (``fast_path``;
    ``segbench.models.reference_paths`` turns it off, as profiling does to count the
    architecture's MACs).
    """

    def __init__(self, in_channels: Sequence[int], num_classes: int, dim: int = 768, dropout: float = 0.1):
        super().__init__()
        self.num_inputs = len(in_channels)
        for i, channels in enumerate(in_channels):
            self.add_module(f"linear_c{i + 1}", LinearEmbed(channels, dim))
        self.linear_fuse = ConvNormAct(dim * self.num_inputs, dim, 1, bias=False, act_layer=nn.ReLU)
        self.dropout = nn.Dropout2d(dropout)
        self.linear_pred = nn.Conv2d(dim, num_classes, 1)
        self.fast_path = True

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        if self.fast_path and not self.training and self.linear_fuse.bn.running_var is not None:
            return self.forward_fused(features)
        size = features[0].shape[2:]
        maps = []
        for i in reversed(range(self.num_inputs)):  # official order: [c4, c3, c2, c1]
            x = getattr(self, f"linear_c{i + 1}")(features[i])
            maps.append(x if x.shape[2:] == size else F.interpolate(x, size=size, mode="bilinear", align_corners=False))
        return self.linear_pred(self.dropout(self.linear_fuse(torch.cat(maps, dim=1))))

    def forward_fused(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """``forward`` in eval mode, exact up to float rounding, without the concatenation.

        ``linear_fuse``'s 1x1 convolution over the concatenated maps is a sum of one
        (dim x dim) block per map, and its batch norm (running statistics) is a per-channel
        affine map: composed with ``linear_c{i}``, each input map gets one affine map to
        ``dim`` channels. Bilinear upsampling (align_corners=False) takes weighted means
        whose weights sum to one, so it commutes with per-pixel affine maps: each map is
        projected at its own resolution (1/32 ... 1/4) and only then upsampled and summed;
        the ReLU comes after the sum, as before. This removes the (num_inputs * dim) x dim
        product at 1/4 resolution, most of the decoder's work (B2 at 512 x 512: 42 of 62
        GMACs). A composed (dim x C_i) weight costs dim * dim * C_i to form, so a map with
        fewer pixels than channels is projected by the two linears in turn instead.
        """
        bn = self.linear_fuse.bn
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        blocks = (self.linear_fuse.conv.weight.flatten(1) * scale[:, None]).chunk(self.num_inputs, dim=1)
        size = features[0].shape[2:]
        out = None
        for block, i in zip(blocks, reversed(range(self.num_inputs))):  # official order: [c4, c3, c2, c1]
            proj = getattr(self, f"linear_c{i + 1}").proj
            x = features[i].permute(0, 2, 3, 1)  # (B, h, w, C): a view of MiT's channels-last maps
            if x.shape[1] * x.shape[2] > x.shape[3]:
                y = F.linear(x, block @ proj.weight, block @ proj.bias)
            else:
                y = F.linear(F.linear(x, proj.weight, proj.bias), block)
            y = y.permute(0, 3, 1, 2)  # channels-last (B, dim, h, w)
            if y.shape[2:] != size:
                y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
            out = y if out is None else out.add_(y)
        shift = bn.bias - bn.running_mean * scale  # constant maps stay constant under upsampling
        return self.linear_pred(F.relu(out + shift[:, None, None]))  # dropout: identity in eval


class EncoderDecoder(nn.Module):
    """logits = decoder(encoder(x)): SegFormer, the CNN baselines, and composites such as
    SegFormer Table 3's ViT-L + All-MLP decoder."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module, info: ModelInfo):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.info = info

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


# Encoder sizes of the official mit_b0 ... mit_b5 (NVlabs/SegFormer mix_transformer.py).
MIT_DEPTHS = {"b0": (2, 2, 2, 2), "b1": (2, 2, 2, 2), "b2": (3, 4, 6, 3), "b3": (3, 4, 18, 3),
              "b4": (3, 8, 27, 3), "b5": (3, 6, 40, 3)}
MIT_DIMS = {"b0": (32, 64, 160, 256)} | {size: (64, 128, 320, 512) for size in ("b1", "b2", "b3", "b4", "b5")}
MIT_HEADS = (1, 2, 5, 8)


def _segformer(num_classes: int, *, encoder: str, dims, depths, heads=MIT_HEADS, sr_ratios=(8, 4, 2, 1),
               mlp_ratios=(4, 4, 4, 4), decoder_dim: int, crop_size: int = 512, drop_path: float = 0.1,
               norm_eps: float = 1e-6) -> EncoderDecoder:
    enc = MixVisionTransformer(dims, depths, heads, sr_ratios, mlp_ratios, drop_path, norm_eps)
    dec = AllMLPDecoder(dims, num_classes, decoder_dim)
    info = ModelInfo(name="", family="segformer", encoder=encoder, decoder=f"all_mlp_c{decoder_dim}",
                     num_classes=num_classes, patch_size=4, output_stride=4, crop_size=crop_size,
                     test_mode="whole")
    return EncoderDecoder(enc, dec, info)


def _mit(size: str, num_classes: int, decoder_dim: int | None = None, **kw) -> EncoderDecoder:
    # Decoder width C: 256 for the real-time B0/B1, 768 otherwise (Sec. 4.2, Table 1b).
    decoder_dim = decoder_dim or (256 if size in ("b0", "b1") else 768)
    return _segformer(num_classes, encoder=f"mit_{size}", dims=MIT_DIMS[size], depths=MIT_DEPTHS[size],
                      decoder_dim=decoder_dim, **kw)


# --- HuggingFace transformers --------------------------------------------------------

# (pattern, replacement) on HF key names, 4.x and 5.x spellings; keys and values keep a
# temporary ``attn.k`` / ``attn.v`` name until they are concatenated into ``attn.kv``.
_HF_RULES = [(re.compile(p), r) for p, r in [
    # transformers 4.x (also what 5.x's save_pretrained writes)
    (r"^segformer\.encoder\.patch_embeddings\.(\d+)\.", lambda m: f"encoder.patch_embed{int(m[1]) + 1}."),
    (r"^segformer\.encoder\.block\.(\d+)\.", lambda m: f"encoder.block{int(m[1]) + 1}."),
    (r"^segformer\.encoder\.layer_norm\.(\d+)\.", lambda m: f"encoder.norm{int(m[1]) + 1}."),
    # transformers 5.x module names (its in-memory state_dict)
    (r"^segformer\.stages\.(\d+)\.patch_embeddings\.", lambda m: f"encoder.patch_embed{int(m[1]) + 1}."),
    (r"^segformer\.stages\.(\d+)\.blocks\.", lambda m: f"encoder.block{int(m[1]) + 1}."),
    (r"^segformer\.stages\.(\d+)\.layer_norm\.", lambda m: f"encoder.norm{int(m[1]) + 1}."),
    (r"^decode_head\.(?:linear_c|linear_projections)\.(\d+)\.", lambda m: f"decoder.linear_c{int(m[1]) + 1}."),
]] + [(re.compile(p), r) for p, r in [
    (r"(patch_embed\d+)\.layer_norm\.", r"\1.norm."),
    (r"\.(?:layer_norm_1|layernorm_before)\.", ".norm1."),
    (r"\.(?:layer_norm_2|layernorm_after)\.", ".norm2."),
    (r"\.attention\.(?:self\.query|q_proj)\.", ".attn.q."),
    (r"\.attention\.(?:self\.key|k_proj)\.", ".attn.k."),
    (r"\.attention\.(?:self\.value|v_proj)\.", ".attn.v."),
    (r"\.attention\.(?:self\.sr|sequence_reduction\.sequence_reduction)\.", ".attn.sr."),
    (r"\.attention\.(?:self\.layer_norm|sequence_reduction\.layer_norm)\.", ".attn.norm."),
    (r"\.attention\.(?:output\.dense|o_proj)\.", ".attn.proj."),
    (r"\.mlp\.(?:dense1|fc1)\.", ".mlp.fc1."),
    (r"\.mlp\.(?:dense2|fc2)\.", ".mlp.fc2."),
    (r"^decode_head\.linear_fuse\.", "decoder.linear_fuse.conv."),
    (r"^decode_head\.batch_norm\.", "decoder.linear_fuse.bn."),
    (r"^decode_head\.classifier\.", "decoder.linear_pred."),
]]


def convert_hf_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HuggingFace ``SegformerForSemanticSegmentation`` weights (transformers 4.x or 5.x
    names) -> this module's names. HF splits the official ``kv`` projection into ``key``
    and ``value``; they are concatenated back (keys first). Keys that are not SegFormer
    weights (e.g. an image classifier's ``classifier.*``) are returned unchanged, so a
    loader reports them as unexpected."""
    renamed = {}
    for key, value in state_dict.items():
        new = key
        for pattern, replacement in _HF_RULES:
            new = pattern.sub(replacement, new)
        renamed[new] = value
    out = {}
    for key, value in renamed.items():
        if ".attn.v." in key and key.replace(".attn.v.", ".attn.k.") in renamed:
            continue
        if ".attn.k." in key and key.replace(".attn.k.", ".attn.v.") in renamed:
            out[key.replace(".attn.k.", ".attn.kv.")] = torch.cat([value, renamed[key.replace(".attn.k.", ".attn.v.")]])
        else:
            out[key] = value
    return out


def is_hf_state_dict(state_dict: dict) -> bool:
    """Whether a state dict holds HuggingFace SegFormer weights (4.x or 5.x names)."""
    return any(k.startswith(("segformer.encoder.", "segformer.stages.")) for k in state_dict)


def segformer_from_hf_config(config: dict | str | os.PathLike, **kw) -> EncoderDecoder:
    """The SegFormer matching a HuggingFace ``config.json`` (a dict or a path to one).

    transformers computes every LayerNorm with eps 1e-5 (it ignores its config's
    ``layer_norm_eps``), so the model is built that way to reproduce its logits; the
    official models use 1e-6 in the blocks (the registry variants do).
    """
    if not isinstance(config, dict):
        config = json.loads(Path(config).read_text())
    if list(config.get("patch_sizes", (7, 3, 3, 3))) != [7, 3, 3, 3] \
            or list(config.get("strides", (4, 2, 2, 2))) != [4, 2, 2, 2]:
        raise ValueError(f"HF config with patch_sizes {config.get('patch_sizes')} and strides "
                         f"{config.get('strides')}: segbench builds only SegFormer's 7/4, 3/2, 3/2, 3/2 embeddings")
    dims = tuple(config.get("hidden_sizes", MIT_DIMS["b0"]))
    depths = tuple(config.get("depths", MIT_DEPTHS["b0"]))
    size = next((s for s in MIT_DEPTHS if MIT_DIMS[s] == dims and MIT_DEPTHS[s] == depths), None)
    num_classes = len(config["id2label"]) if "id2label" in config else config.get("num_labels", 2)
    kw.setdefault("drop_path", config.get("drop_path_rate", 0.1))
    model = _segformer(num_classes, encoder=f"mit_{size}" if size else "mit_custom", dims=dims, depths=depths,
                       heads=tuple(config.get("num_attention_heads", MIT_HEADS)),
                       sr_ratios=tuple(config.get("sr_ratios", (8, 4, 2, 1))),
                       mlp_ratios=tuple(config.get("mlp_ratios", (4, 4, 4, 4))),
                       decoder_dim=config.get("decoder_hidden_size", 256), norm_eps=1e-5, **kw)
    model.info = model.info.with_(name=f"segformer_{size}" if size else "segformer_custom")
    return model


# The composites (segbench.models.composites) are of this family too: SegFormer's recipe and test protocol.
register_family(Family("segformer", recipe="segformer", drop_path=True))


# --- variants -------------------------------------------------------------------------

@register_model
def segformer_b0(num_classes: int, **kw) -> EncoderDecoder:
    return _mit("b0", num_classes, **kw)


@register_model
def segformer_b1(num_classes: int, **kw) -> EncoderDecoder:
    return _mit("b1", num_classes, **kw)


@register_model
def segformer_b2(num_classes: int, **kw) -> EncoderDecoder:
    return _mit("b2", num_classes, **kw)


@register_model
def segformer_b3(num_classes: int, **kw) -> EncoderDecoder:
    return _mit("b3", num_classes, **kw)


@register_model
def segformer_b4(num_classes: int, **kw) -> EncoderDecoder:
    return _mit("b4", num_classes, **kw)


@register_model
def segformer_b5(num_classes: int, **kw) -> EncoderDecoder:
    return _mit("b5", num_classes, **kw)


@register_model
def segformer_b5_640(num_classes: int, **kw) -> EncoderDecoder:
    """B5 as trained for ADE20K at 640x640 (the paper's best ADE20K model)."""
    return _mit("b5", num_classes, crop_size=640, **kw)


@register_model
def segformer_micro(num_classes: int, **kw) -> EncoderDecoder:
    """A tiny MiT for the synthetic CPU quickstart (128 px): not a paper model."""
    return _segformer(num_classes, encoder="mit_micro", dims=(16, 32, 64, 128), depths=(1, 1, 1, 1),
                      heads=(1, 1, 2, 4), decoder_dim=64, crop_size=128, **kw)
