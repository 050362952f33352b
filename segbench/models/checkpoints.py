"""Checkpoints: load any supported format into a registry model, safely, with an honest
report of what matched.

``load_model(arch, path, num_classes)`` is the one entry point; the format is detected
from the file's contents, in this order:

1. segbench's own (``{"format": "segbench-v1", "info": ..., "state_dict": ...}``);
2. official Segmenter (rstrudel/segmenter): ``{"model": state_dict, "n_cls": ...}`` with
   ``variant.yml`` beside it. Keys load as they are; ``net_kwargs`` must describe the
   architecture asked for, and the training crop and normalisation travel into
   ``model.info``;
3. mmsegmentation 0.x format (official SETR and NVlabs SegFormer): ``{"state_dict": ...}``
   (or a bare state dict) with ``backbone.*``, ``decode_head.*``, ``auxiliary_head.N.*``,
   renamed to ``encoder.*``, ``decoder.*``, ``aux_heads.N.*``;
4. HuggingFace transformers SegFormer (keys ``segformer.*`` or ``decode_head.linear_c.*``,
   ``.safetensors`` or ``.bin``), converted by ``segbench.models.segformer``.

ImageNet classification weights (timm ``.pth`` / ``.safetensors``, Google's ViT ``.npz``)
are not segmentation checkpoints: ``init_encoder_from_imagenet`` copies them into a
model's encoder, resizing the position embeddings, the way the papers fine-tune.

Files are read with ``torch.load(weights_only=True)``, safetensors or ``numpy.load``
without pickle, so loading never runs code from the file. Keys the official models carry
but never use (ImageNet classifiers, mmseg's ``conv_seg``) are reported as ignored; any
other missing, unexpected or mis-shaped key refuses the load unless ``allow_partial``.
"""
from __future__ import annotations

import dataclasses
import math
import os
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import yaml

from segbench.errors import SegbenchError
from segbench.files import atomic_write
from segbench.models import VIT_MEAN, VIT_STD, ModelInfo, create_model, family_of, list_models
from segbench.models.segmenter import DEIT_MEAN, DEIT_STD

SEGBENCH_FORMAT = "segbench-v1"
SEGMENTER_FORMAT = "segmenter-official"
MMSEG_FORMAT = "mmseg"
HF_SEGFORMER_FORMAT = "hf-segformer"
IMAGENET_FORMAT = "imagenet-classifier"

# Parameters official checkpoints hold that segmentation never uses.
UNUSED_KEYS = (
    re.compile(r"encoder\.(head|head_dist)\.(weight|bias)$"),  # Segmenter's ImageNet classifier
    re.compile(r"(decoder|aux_heads\.\d+)\.conv_seg\.(weight|bias)$"),  # mmseg BaseDecodeHead, unused by SETR/SegFormer
    re.compile(r"auxiliary_head\."),  # mmseg CNN configs' training-only FCN head, which segbench does not build
)
MMSEG_PREFIXES = (("backbone.", "encoder."), ("decode_head.", "decoder."), ("auxiliary_head.", "aux_heads."))


class CheckpointError(SegbenchError, ValueError):
    """A checkpoint cannot be loaded as asked; the message says why and what to do."""


@dataclass
class LoadReport:
    path: str
    format: str
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)  # "key: checkpoint shape vs model shape"
    ignored: list[str] = field(default_factory=list)  # known-unused keys of official checkpoints
    notes: list[str] = field(default_factory=list)  # settings taken from the file, conversions done

    @property
    def complete(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self, limit: int = 10) -> str:
        parts = []
        for title, keys in (("missing", self.missing), ("unexpected", self.unexpected),
                            ("shape mismatch", self.mismatched), ("ignored (unused by design)", self.ignored)):
            if keys:
                shown = ", ".join(keys[:limit]) + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")
                parts.append(f"{title}: {shown}")
        return "; ".join(parts) or "all keys matched"


def read_file(path: str | os.PathLike) -> dict:
    """Load a checkpoint file's contents without executing code. A file that is empty,
    truncated or not a checkpoint at all is called corrupt, not unsafe."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file (0 bytes), not a checkpoint; re-download or re-save it")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except SafetensorError as exc:
            raise CheckpointError(f"{path}: corrupt or not a safetensors file ({_reason(exc)}); "
                                  "re-download or re-save it") from None
    with open(path, "rb") as f:
        head = f.read(2)
    # torch.save writes a zip archive (PK..), older releases a pickle (protocol 2-5: 0x80 0x02-0x05)
    if head != b"PK" and not (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")):
        raise CheckpointError(f"{path}: corrupt or not a checkpoint: neither the zip archive torch.save writes nor "
                              "a pickle; re-download or re-save it")
    if head == b"PK" and not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path}: corrupt checkpoint: its zip archive is truncated or damaged "
                              f"({path.stat().st_size} bytes); re-download or re-save it")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "truncated" in str(exc):
            raise CheckpointError(f"{path}: corrupt checkpoint: {_reason(exc)}; re-download or re-save it") from None
        raise CheckpointError(
            f"{path}: refused to load: the file holds objects other than tensors and plain containers, "
            f"and segbench never unpickles code ({_reason(exc)}). "
            "Re-save only the state dict, e.g. torch.save({'state_dict': model.state_dict()}, path).") from None
    except (EOFError, RuntimeError, zipfile.BadZipFile, KeyError) as exc:  # a damaged archive or pickle
        raise CheckpointError(f"{path}: corrupt checkpoint ({type(exc).__name__}: {_reason(exc)}); "
                              "re-download or re-save it") from None


def _reason(exc: BaseException) -> str:
    """The informative line of a reader's message (torch's weights-only errors start with a
    paragraph of advice), at most 200 characters; the exception's type where it says nothing."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    telling = [line for line in lines if re.search(r"GLOBAL|Unsupported|truncated", line)]
    advice = ("Weights only load failed", "Please file an issue", "Check the documentation")
    return (telling or [line for line in lines if not line.startswith(advice)] or lines
            or [type(exc).__name__])[0][:200]


def load_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor], path: str, fmt: str,
                    allow_partial: bool = False, report: LoadReport | None = None) -> LoadReport:
    """Copy matching tensors into ``model``; refuse a partial load unless allowed."""
    own = model.state_dict()
    report = report or LoadReport(path=str(path), format=fmt)
    usable = {}
    for key, value in state_dict.items():
        if key not in own:
            (report.ignored if any(p.match(key) for p in UNUSED_KEYS) else report.unexpected).append(key)
        elif tuple(value.shape) != tuple(own[key].shape):
            report.mismatched.append(f"{key}: {tuple(value.shape)} vs {tuple(own[key].shape)}")
        else:
            usable[key] = value
    report.missing = [k for k in own if k not in state_dict]
    if not report.complete and not allow_partial:
        raise CheckpointError(f"{path} ({fmt}) does not fit {model.info.name}: {report.summary()}. "
                              "Check the model name and class count, or allow a partial load explicitly.")
    model.load_state_dict(usable, strict=False)
    return report


def save_checkpoint(path: str | os.PathLike, model: nn.Module, **extra) -> Path:
    """Write a segbench checkpoint atomically: weights plus the ModelInfo that built them."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": SEGBENCH_FORMAT, "info": dataclasses.asdict(model.info),
               "state_dict": model.state_dict(), **extra}
    with atomic_write(path) as f:
        torch.save(payload, f)
    return path


# --- format detection and conversion ----------------------------------------------------

@dataclass
class Converted:
    """A checkpoint in segbench's key names, plus what it says about the model."""

    format: str
    state_dict: dict[str, torch.Tensor]
    crop_size: int | None = None  # the training crop the position embeddings were built for
    info: dict = field(default_factory=dict)  # ModelInfo fields the file decides
    notes: list[str] = field(default_factory=list)


def _is_state_dict(obj) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def detect_format(payload: dict) -> str:
    """Which format a loaded file is in (see the module docstring)."""
    if payload.get("format") == SEGBENCH_FORMAT:
        return SEGBENCH_FORMAT
    if _is_state_dict(payload.get("model")) and any(k.startswith("encoder.") for k in payload["model"]):
        return SEGMENTER_FORMAT
    sd = payload.get("state_dict", payload)
    if _is_state_dict(sd):
        if any(k.startswith("segformer.") or k.startswith("decode_head.linear_c.") for k in sd):
            return HF_SEGFORMER_FORMAT
        if any(k.startswith(("backbone.", "decode_head.")) for k in sd):
            return MMSEG_FORMAT
    if any(_is_state_dict(p) and "blocks.0.norm1.weight" in p for p in (sd, payload.get("model"))):
        return IMAGENET_FORMAT
    keys = sorted(payload)[:8] if isinstance(payload, dict) else type(payload).__name__
    raise CheckpointError(f"not a checkpoint format segbench recognises (top-level keys: {keys}); supported: "
                          "segbench, official Segmenter checkpoint.pth + variant.yml, mmsegmentation "
                          "(SETR, SegFormer), HuggingFace SegFormer")


def _mmseg(payload: dict, family: str) -> Converted:
    state_dict = payload.get("state_dict", payload)
    known = family_of(family)
    if known is not None and known.mmseg_state_dict is not None:  # e.g. mmseg ResNetV1c names -> timm's
        return Converted(MMSEG_FORMAT, known.mmseg_state_dict(state_dict))
    if any(key.startswith("backbone.layers.") for key in state_dict):
        # mmseg 1.x re-implemented ViT and MiT (nn.MultiheadAttention, 1x1-conv MLPs) and its
        # SegformerHead adds BN + ReLU per stage: not the papers' models, so no renaming fits.
        raise CheckpointError("an mmsegmentation 1.x checkpoint (keys 'backbone.layers.*'): its ViT / MiT "
                              "modules and SegFormer head are mmseg's re-implementations, not the official "
                              "models segbench builds. Use the official release (fudan-zvg/SETR, "
                              "NVlabs/SegFormer mmseg-0.x files with 'backbone.blocks.*' / 'backbone.block1.*') "
                              "or HuggingFace SegFormer weights")
    renamed = {}
    for key, value in state_dict.items():
        for old, new in MMSEG_PREFIXES:
            if key.startswith(old):
                key = new + key[len(old):]
                break
        renamed[key] = value
    return Converted(MMSEG_FORMAT, renamed)


def _hf_segformer(payload: dict, path: Path) -> Converted:
    try:
        from segbench.models.segformer import convert_hf_state_dict
    except ImportError as exc:
        raise CheckpointError(f"HuggingFace SegFormer weights need segbench.models.segformer ({exc})") from None
    try:
        return Converted(HF_SEGFORMER_FORMAT, convert_hf_state_dict(payload.get("state_dict", payload)))
    except RuntimeError as exc:  # the key and value projections it concatenates do not fit together
        raise CheckpointError(f"{path}: HuggingFace SegFormer weights with inconsistent shapes "
                              f"({_reason(exc)}): not a consistent SegFormer checkpoint") from None


class _VariantLoader(yaml.SafeLoader):
    """Safe YAML plus the ``!!python/tuple`` tag that the official variant.yml uses for image_size."""


_VariantLoader.add_constructor("tag:yaml.org,2002:python/tuple", lambda loader, node: loader.construct_sequence(node))

SEGMENTER_DIMS = {192: "t", 384: "s", 768: "b", 1024: "l"}


def official_segmenter_name(net: dict) -> str:
    """The registry name for an official Segmenter ``net_kwargs`` (crop suffix aside)."""
    encoder = SEGMENTER_DIMS.get(net["d_model"], f"d{net['d_model']}")
    encoder = f"deit_{encoder}" if net.get("distilled") else encoder
    decoder = net["decoder"]["name"]
    if decoder != "linear":
        decoder = "mask" if net["decoder"].get("n_layers", 2) == 2 else f"mask{net['decoder']['n_layers']}"
    return f"segmenter_{encoder}{net['patch_size']}_{decoder}"


def _segmenter_official(payload: dict, path: Path, arch: str, num_classes: int, allow_partial: bool) -> Converted:
    converted = Converted(SEGMENTER_FORMAT, dict(payload["model"]))
    n_cls = payload.get("n_cls")
    if n_cls is not None and n_cls != num_classes and not allow_partial:
        raise CheckpointError(f"{path}: trained for {n_cls} classes but {num_classes} are asked for; "
                              "evaluate it on its own dataset, or allow a partial load to fine-tune")
    variant_path = path.parent / "variant.yml"
    if not variant_path.is_file():
        converted.notes.append("no variant.yml beside the checkpoint: architecture not checked, "
                               "test settings are the registry defaults")
        return converted
    try:
        variant = yaml.load(variant_path.read_text(), Loader=_VariantLoader)
        net = variant["net_kwargs"]
        expected = official_segmenter_name(net)
    except (yaml.YAMLError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{variant_path}: not an official Segmenter variant.yml ({exc})") from None
    if arch != expected and not arch.startswith(f"{expected}_"):
        matching = [name for name in list_models(f"{expected}*") if name == expected or name.startswith(f"{expected}_")]
        hint = (f"use arch: {' or '.join(matching)}" if matching else
                "no segbench variant has this architecture (`segbench models 'segmenter_*'` lists them)")
        raise CheckpointError(f"{variant_path}: net_kwargs describe {expected} (backbone {net.get('backbone')}, "
                              f"decoder {net['decoder']['name']}), not {arch}; {hint}")
    image_size = net.get("image_size") or variant.get("inference_kwargs", {}).get("window_size")
    converted.crop_size = int(image_size[0] if isinstance(image_size, (list, tuple)) else image_size)
    vit = net.get("normalization", "vit") == "vit"
    # The window is the training crop, as in the official evaluation script (segm/eval/miou.py),
    # which also fixes the stride to crop - 32: that is the info's default, so test_stride stays None.
    converted.info = {"crop_size": converted.crop_size, "mean": VIT_MEAN if vit else DEIT_MEAN,
                      "std": VIT_STD if vit else DEIT_STD}
    inference = variant.get("inference_kwargs", {})
    converted.notes.append(f"variant.yml: {expected}, crop {converted.crop_size}, normalization "
                           f"{net.get('normalization')}, inference_kwargs {inference}")
    return converted


def _grid_crop(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> int | None:
    """The crop a checkpoint's position embeddings were built for, if it differs from the model's."""
    encoder = getattr(model, "encoder", None)
    theirs = state_dict.get("encoder.pos_embed")
    if theirs is None or not isinstance(getattr(encoder, "pos_embed", None), torch.Tensor):
        return None
    extra = encoder.pos_embed.shape[1] - encoder.grid[0] * encoder.grid[1]
    side = math.isqrt(theirs.shape[1] - extra)
    if side * side != theirs.shape[1] - extra or theirs.shape[1] == encoder.pos_embed.shape[1]:
        return None
    return side * encoder.patch_size


def _saved_info(payload: dict, checkpoint) -> ModelInfo:
    """The ModelInfo a segbench checkpoint carries; a damaged one is an error naming the field."""
    info, names = payload.get("info"), {f.name for f in dataclasses.fields(ModelInfo)}
    problem = None
    if not isinstance(info, dict):
        problem = f"expected a mapping of ModelInfo fields, got {type(info).__name__}"
    elif set(info) - names:
        problem = f"unknown field {sorted(set(info) - names)[0]!r}"
    elif not isinstance(payload.get("state_dict"), dict):
        problem = "no `state_dict` beside it"
    if problem is None:
        try:
            return ModelInfo(**{k: tuple(v) if isinstance(v, list) else v for k, v in info.items()})
        except TypeError as exc:
            problem = str(exc)
    raise CheckpointError(f"{checkpoint}: a segbench checkpoint whose `info` cannot be used ({problem}); "
                          "re-save it with segbench.models.checkpoints.save_checkpoint")


def load_model(arch: str, checkpoint: str | os.PathLike | None, num_classes: int,
               allow_partial: bool = False) -> tuple[nn.Module, LoadReport | None]:
    """Build ``arch``, load ``checkpoint`` into it (format detected from the contents) and
    return it in eval mode.

    The model is built for the checkpoint's training crop (its position embeddings), and
    the settings the file carries (crop, normalisation, test window) go into ``model.info``.
    """
    if ":" in arch:  # a user model: segbench or plain state_dict files (segbench.models.custom)
        from segbench.models import custom

        return custom.load(arch, checkpoint, num_classes, allow_partial)
    if checkpoint is None:
        return create_model(arch, num_classes=num_classes).eval(), None
    path = Path(checkpoint)
    payload = read_file(path)
    try:
        fmt = detect_format(payload if isinstance(payload, dict) else {})
    except CheckpointError as exc:
        raise CheckpointError(f"{checkpoint}: {exc}") from None
    if fmt == SEGBENCH_FORMAT:
        saved = _saved_info(payload, checkpoint)
        if saved.name != arch:
            raise CheckpointError(f"{checkpoint}: holds a {saved.name} but the suite asks for {arch}")
        converted = Converted(fmt, payload["state_dict"], crop_size=saved.crop_size,
                              info={f.name: getattr(saved, f.name) for f in dataclasses.fields(saved)})
    elif fmt == SEGMENTER_FORMAT:
        converted = _segmenter_official(payload, path, arch, num_classes, allow_partial)
    elif fmt == MMSEG_FORMAT:
        with torch.device("meta"):
            family = create_model(arch, num_classes=num_classes).info.family
        converted = _mmseg(payload, family)
    elif fmt == HF_SEGFORMER_FORMAT:
        converted = _hf_segformer(payload, path)
    else:
        raise CheckpointError(f"{checkpoint}: an ImageNet classification checkpoint, not a segmentation one; "
                              "use it to initialise an encoder for training "
                              "(segbench.models.checkpoints.init_encoder_from_imagenet)")

    with torch.device("meta"):
        probe = create_model(arch, num_classes=num_classes)
    crop = converted.crop_size or _grid_crop(probe, converted.state_dict)
    build = {"crop_size": crop} if crop and crop != probe.info.crop_size else {}
    model = create_model(arch, num_classes=num_classes, **build)
    report = LoadReport(path=str(checkpoint), format=converted.format, notes=list(converted.notes))
    if build:
        report.notes.append(f"built for the checkpoint's crop {crop} (registry default {probe.info.crop_size})")
        model.info = model.info.with_(crop_size=crop)
    load_state_dict(model, converted.state_dict, str(checkpoint), converted.format, allow_partial, report)
    model.info = model.info.with_(**converted.info)
    return model.eval(), report


# --- ImageNet initialisation of encoders --------------------------------------------------

VIT_KEY = re.compile(r"(patch_embed\.proj\.|cls_token$|dist_token$|pos_embed$|blocks\.\d+\.|norm\.)")
CLASSIFIER_KEY = re.compile(r"(head|head_dist|fc_norm|pre_logits)(\.|$)")


def _read_imagenet(path: Path, heads: int) -> dict[str, torch.Tensor]:
    """timm-named ViT weights from a timm/DeiT ``.pth``, ``.safetensors`` or Google ``.npz``."""
    if path.suffix == ".npz":
        import numpy as np
        from timm.models.vision_transformer import VisionTransformer, _load_weights

        with np.load(path, allow_pickle=False) as npz:
            names = list(npz.files)
            prefix = next(n for n in names if n.endswith("embedding/kernel"))[: -len("embedding/kernel")]
            patch, _, _, dim = npz[prefix + "embedding/kernel"].shape
            tokens = npz[prefix + "Transformer/posembed_input/pos_embedding"].shape[1]
        depth = len({m.group(1) for n in names if (m := re.search(r"encoderblock_(\d+)/", n))})
        vit = VisionTransformer(img_size=math.isqrt(tokens - 1) * patch, patch_size=patch, embed_dim=dim,
                                depth=depth, num_heads=heads, num_classes=0, qkv_bias=True)
        _load_weights(vit, str(path))
        return vit.state_dict()
    payload = read_file(path)
    for wrapper in ("model", "state_dict"):  # DeiT's releases wrap the weights in "model"
        if isinstance(payload, dict) and _is_state_dict(payload.get(wrapper)):
            payload = payload[wrapper]
    if not _is_state_dict(payload):
        raise CheckpointError(f"{path}: not a state dict of ViT weights")
    return payload


def init_encoder_from_imagenet(model: nn.Module, path: str | os.PathLike, allow_partial: bool = False) -> LoadReport:
    """Initialise ``model.encoder`` (a ViT) from ImageNet classification weights.

    As the papers fine-tune: the grid part of the position embeddings is resized
    bilinearly to the model's crop (Segmenter Sec. 4.2, SETR Sec. 4.1), extra tokens kept;
    a distillation token the model lacks is dropped (SETR-DeiT keeps only the cls
    position, as the official loader). The classifier is ignored. Encoder parts no ViT
    has (SETR-MLA's neck and tap norms) stay randomly initialised, and are listed in the
    report's notes; any other missing or mis-shaped ViT key refuses the load unless
    ``allow_partial``.
    """
    path = Path(path)
    encoder = model.encoder
    weights = _read_imagenet(path, heads=encoder.blocks[0].attn.num_heads)
    own = encoder.state_dict()
    report = LoadReport(path=str(path), format=IMAGENET_FORMAT)
    converted = {}
    for key, value in weights.items():
        if key == "patch_embed.proj.weight" and value.ndim == 2:  # old timm releases: a linear patch projection
            value = value.reshape(value.shape[0], 3, encoder.patch_size, encoder.patch_size)
        if key == "pos_embed":
            value = _fit_pos_embed(value, own["pos_embed"], encoder, bool("dist_token" in weights))
        if CLASSIFIER_KEY.match(key) or (key not in own and key in ("norm.weight", "norm.bias", "dist_token")):
            report.ignored.append(key)  # the classifier; SETR's ViT has no final norm; SETR-DeiT no dist token
            continue
        converted[key] = value
    for key, value in converted.items():
        if key not in own:
            report.unexpected.append(key)
        elif tuple(value.shape) != tuple(own[key].shape):
            report.mismatched.append(f"{key}: {tuple(value.shape)} vs {tuple(own[key].shape)}")
    new_parts = [k for k in own if k not in converted and not VIT_KEY.match(k)]
    report.missing = [k for k in own if k not in converted and VIT_KEY.match(k)]
    if new_parts:
        report.notes.append(f"randomly initialised (not part of a ViT): {len(new_parts)} tensors, "
                            f"e.g. {', '.join(new_parts[:3])}")
    if not report.complete and not allow_partial:
        raise CheckpointError(f"{path}: ImageNet weights do not fit the encoder of {model.info.name}: "
                              f"{report.summary()}")
    encoder.load_state_dict({k: v for k, v in converted.items() if k in own and v.shape == own[k].shape},
                            strict=False)
    return report


def _fit_pos_embed(theirs: torch.Tensor, ours: torch.Tensor, encoder: nn.Module, distilled: bool) -> torch.Tensor:
    from segbench.models.segmenter import resize_pos_embed

    their_extra = 2 if distilled else 1
    our_extra = ours.shape[1] - encoder.grid[0] * encoder.grid[1]
    resized = resize_pos_embed(theirs, encoder.grid, their_extra)
    if their_extra > our_extra:  # keep the cls position, drop the distillation one
        resized = torch.cat([resized[:, :our_extra], resized[:, their_extra:]], dim=1)
    return resized
