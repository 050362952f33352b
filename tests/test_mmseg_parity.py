"""Parity with mmsegmentation 1.x's own Segmenter and SETR modules (a reference
implementation written independently of segbench), built on CPU with the same weights.

Needs ``mmcv-lite==2.1.0 mmengine==0.10.7 mmsegmentation==1.2.2 ftfy regex``; skipped when
mmseg does not import. mmcv-lite lacks the compiled ``mmcv._ext``; the modules compared
here never call it, so a stand-in module is registered before the import.

What is compared, and what is not:

- Segmenter: mmseg's VisionTransformer (final norm, cls token) + SegmenterMaskTransformerHead
  against our encoder + mask transformer, logits at full resolution. mmseg's Segmenter
  configs use LayerNorm eps 1e-6 where the official code uses PyTorch's default 1e-5 (ours);
  the reference is built with 1e-5.
- SETR encoder: mmseg's VisionTransformer taps with the cls token kept through the blocks
  (Naive / PUP) and removed before them (MLA), and mmseg's MLANeck (per-tap LayerNorm,
  1x1 conv, top-down sums, 3x3 conv). mmseg orders the neck's outputs top level first and
  applies its i-th 3x3 conv to the i-th level from the top; the weights are mapped accordingly.
- SETR heads are not compared: mmseg 1.x's SETRUPHead / SETRMLAHead deviate from the
  official code that segbench follows (fudan-zvg/SETR): no conv bias before BN, upsampling
  before the classifier, a 1x1 instead of 3x3 MLA classifier, align_corners=False in the
  MLA streams. Their key names and shapes are checked against the official layout in
  tests/test_checkpoints.py instead.
"""
from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

from segbench.bench_pipeline import import_mmseg
from segbench.models import create_model


@pytest.fixture(scope="module")
def mmseg_models():
    mmseg, reason = import_mmseg()  # with segbench's stand-in for mmcv's compiled ops
    if mmseg is None:
        pytest.skip(f"mmsegmentation not importable: {reason}")
    from mmengine.config import ConfigDict
    from mmseg.registry import MODELS

    def build(**cfg):
        module = MODELS.build(ConfigDict(cfg))
        module.eval()  # (mmengine's train() does not return the module)
        return module
    return build


VIT_RENAMES = [  # ours (timm block names) -> mmseg 1.x
    (r"patch_embed\.proj\.", "patch_embed.projection."),
    (r"blocks\.(\d+)\.norm1\.", r"layers.\1.ln1."), (r"blocks\.(\d+)\.norm2\.", r"layers.\1.ln2."),
    (r"blocks\.(\d+)\.attn\.qkv\.weight", r"layers.\1.attn.attn.in_proj_weight"),
    (r"blocks\.(\d+)\.attn\.qkv\.bias", r"layers.\1.attn.attn.in_proj_bias"),
    (r"blocks\.(\d+)\.attn\.proj\.", r"layers.\1.attn.attn.out_proj."),
    (r"blocks\.(\d+)\.mlp\.fc1\.", r"layers.\1.ffn.layers.0.0."), (r"blocks\.(\d+)\.mlp\.fc2\.", r"layers.\1.ffn.layers.1."),
]


def _load_mapped(reference, ours: dict, renames, transforms=None):
    """Copy ``ours`` into ``reference`` through regex renames; every reference key must be covered."""
    mapped = {}
    for key, value in ours.items():
        for pattern, repl in renames:
            if re.fullmatch(pattern + ".*", key):
                key = re.sub(pattern, repl, key, count=1)
                break
        mapped[key] = (transforms or {}).get(key, lambda v: v)(value)
    reference.load_state_dict(mapped, strict=True)  # every key on both sides mapped


def _vit_cfg(dim, depth, heads, size, **kw):
    return dict(type="VisionTransformer", img_size=(size, size), patch_size=16, in_channels=3, embed_dims=dim,
                num_layers=depth, num_heads=heads, mlp_ratio=4, qkv_bias=True, drop_rate=0.0, attn_drop_rate=0.0,
                drop_path_rate=0.0, act_cfg=dict(type="GELU"), interpolate_mode="bilinear", patch_bias=True, **kw)


def test_segmenter_mask_matches_mmseg(mmseg_models):
    torch.manual_seed(0)
    ours = create_model("segmenter_t16_mask", 7, crop_size=64).eval()
    backbone = mmseg_models(**_vit_cfg(192, 12, 3, 64, out_indices=(11,), with_cls_token=True, final_norm=True,
                                       norm_cfg=dict(type="LN", eps=1e-5)))
    head = mmseg_models(type="SegmenterMaskTransformerHead", in_channels=192, channels=192, num_classes=7,
                        num_layers=2, num_heads=3, embed_dims=192, dropout_ratio=0.0,
                        loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0))
    enc = {k: v for k, v in ours.encoder.state_dict().items()}
    enc["ln1.weight"], enc["ln1.bias"] = enc.pop("norm.weight"), enc.pop("norm.bias")
    _load_mapped(backbone, enc, VIT_RENAMES)
    transpose = {"patch_proj.weight": lambda v: v.T, "classes_proj.weight": lambda v: v.T}  # x @ P == Linear(P^T)
    _load_mapped(head, ours.decoder.state_dict(), VIT_RENAMES + [
        (r"proj_dec\.", "dec_proj."), (r"proj_patch", "patch_proj.weight"), (r"proj_classes", "classes_proj.weight")],
        transpose)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        reference = F.interpolate(head(backbone(x)), size=(64, 64), mode="bilinear", align_corners=False)
        torch.testing.assert_close(ours(x), reference, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("decoder", ["naive", "mla"])
def test_setr_encoder_matches_mmseg(mmseg_models, decoder):
    torch.manual_seed(0)
    ours = create_model(f"setr_micro_p16_{decoder}", 9, crop_size=64).eval()
    taps = ours.encoder.out_indices
    backbone = mmseg_models(**_vit_cfg(64, 4, 2, 64, out_indices=taps, with_cls_token=decoder != "mla",
                                       final_norm=False, norm_cfg=dict(type="LN", eps=1e-6)))
    vit_keys = {k: v for k, v in ours.encoder.state_dict().items() if not k.startswith(("mla.", "norm_"))}
    _load_mapped(backbone, vit_keys, VIT_RENAMES)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        reference = backbone(x)
        if decoder == "naive":
            for a, b in zip(ours.encoder(x), reference):
                torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
            return
        neck = mmseg_models(type="MLANeck", in_channels=[64] * 4, out_channels=32, norm_cfg=dict(type="BN"),
                            act_cfg=dict(type="ReLU"))
        for module in ours.encoder.mla.modules():  # non-trivial BN statistics
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
        bn = {"0": "conv", "1": "bn"}
        renames = [(r"norm_(\d)\.", r"norm.\1.")]
        renames += [(rf"mla\.mla_p{level}_1x1\.(\d)\.", f"mla.channel_proj.{level - 2}.%s.") for level in (2, 3, 4, 5)]
        renames += [(rf"mla\.mla_p{level}\.(\d)\.", f"mla.feat_extract.{5 - level}.%s.") for level in (2, 3, 4, 5)]
        neck_state = {}
        for key, value in ours.encoder.state_dict().items():
            if key.startswith(("mla.", "norm_")):
                for pattern, repl in renames:
                    m = re.match(pattern, key)
                    if m:
                        new = repl % bn[m.group(1)] if "%s" in repl else re.sub(pattern, repl, key[:m.end()])
                        neck_state[new + key[m.end():]] = value
                        break
        neck.load_state_dict(neck_state, strict=True)
        for a, b in zip(ours.encoder(x), neck(reference)[::-1]):  # mmseg: top level first
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
