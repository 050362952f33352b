"""Writers of random-weight checkpoints in each official release's file format (for tests)."""
from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml

MMSEG_CNN_LAYOUTS = Path(__file__).parent / "data" / "mmseg_cnn_keys.json"
VIT_SIZES = {192: "tiny", 384: "small", 768: "base", 1024: "large"}


def randomise(model):
    """Random values everywhere, BN statistics included, so a dropped tensor shows in the logits."""
    torch.manual_seed(0)
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.copy_(torch.rand_like(t) * 0.2 + 0.9 if t.ndim == 1 else torch.randn_like(t) * 0.05)
    return model.eval()


def write_official_segmenter(folder: Path, model) -> Path:
    """``checkpoint.pth`` + ``variant.yml`` as rstrudel/segmenter's train.py writes them, for
    a segbench Segmenter (its ViT size, patch, DeiT distillation, decoder and crop)."""
    folder.mkdir(parents=True, exist_ok=True)
    encoder, info = model.encoder, model.info
    dim, distilled = encoder.cls_token.shape[-1], encoder.dist_token is not None
    state = dict(model.state_dict())
    for head in ("head", "head_dist") if distilled else ("head",):  # the unused ImageNet classifiers
        state[f"encoder.{head}.weight"], state[f"encoder.{head}.bias"] = torch.randn(1000, dim), torch.zeros(1000)
    torch.save({"model": state, "optimizer": {"state": {}, "param_groups": [{"lr": 1e-3, "params": [0, 1]}]},
                "n_cls": info.num_classes, "lr_scheduler": {"last_epoch": 10, "base_lrs": [1e-3]},
                "epoch": 63}, folder / "checkpoint.pth")
    crop, normalization = info.crop_size, "deit" if distilled else "vit"
    backbone = (f"deit_{VIT_SIZES[dim]}_distilled" if distilled else f"vit_{VIT_SIZES[dim]}") + \
        f"_patch{encoder.patch_size}_384"
    decoder = {"name": "linear"} if info.decoder == "linear" else {
        "name": "mask_transformer", "drop_path_rate": 0.0, "dropout": 0.1, "n_layers": len(model.decoder.blocks)}
    variant = {"net_kwargs": {"backbone": backbone, "image_size": (crop, crop), "patch_size": encoder.patch_size,
                              "d_model": dim, "n_heads": encoder.blocks[0].attn.num_heads,
                              "n_layers": len(encoder.blocks), "normalization": normalization,
                              "distilled": distilled, "dropout": 0.0, "drop_path_rate": 0.1, "decoder": decoder,
                              "n_cls": info.num_classes},
               "inference_kwargs": {"im_size": 512, "window_size": crop, "window_stride": crop - 32},
               "dataset_kwargs": {"normalization": normalization}}
    text = yaml.dump(variant)  # PyYAML's default Dumper, as the official code: tuples become !!python/tuple
    assert "!!python/tuple" in text
    (folder / "variant.yml").write_text(text)
    return folder / "checkpoint.pth"


def mmseg_state_dict(model) -> dict:
    """A SETR / SegFormer model's weights under the official (mmseg 0.x) names: backbone /
    decode_head / auxiliary_head.N, plus the unused conv_seg of every head."""
    renames = (("encoder.", "backbone."), ("decoder.", "decode_head."), ("aux_heads.", "auxiliary_head."))
    state = {}
    for key, value in model.state_dict().items():
        for ours, theirs in renames:
            if key.startswith(ours):
                state[theirs + key[len(ours):]] = value
    k = model.info.num_classes
    for head in ["decode_head"] + [f"auxiliary_head.{i}" for i in range(len(getattr(model, "aux_heads", ())))]:
        state[f"{head}.conv_seg.weight"], state[f"{head}.conv_seg.bias"] = torch.randn(k, 512, 1, 1), torch.zeros(k)
    return state


def mmseg_cnn_state_dict(arch: str, num_classes: int) -> dict:
    """Random weights in the names and shapes mmsegmentation gives ``arch`` (FCN / DeepLabv3+,
    auxiliary head included; recorded in tests/data/mmseg_cnn_keys.json), for ``num_classes``."""
    layout = json.loads(MMSEG_CNN_LAYOUTS.read_text())["models"][arch]
    torch.manual_seed(0)
    state = {}
    for key, shape in layout.items():
        if key.endswith(("conv_seg.weight", "conv_seg.bias")):
            shape = [num_classes, *shape[1:]]
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(160000)
        elif len(shape) == 1:  # BN scales and statistics (variances positive), biases
            state[key] = torch.rand(shape) * 0.2 + 0.9
        else:
            state[key] = torch.randn(shape) * 0.05
    return state


def write_mmseg(path: Path, state_dict: dict, classes: tuple[str, ...]) -> Path:
    """An mmseg model-zoo file: ``{"meta": ..., "state_dict": ...}`` (SETR, SegFormer, CNNs)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"meta": {"mmseg_version": "0.11.0", "CLASSES": list(classes)}, "state_dict": state_dict}, path)
    return path
