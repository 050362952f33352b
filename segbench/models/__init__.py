"""Model registry: one flat mapping from a variant name to the function that builds it.

Every model is an ``nn.Module`` that maps a normalised batch ``(B, 3, H, W)`` to class
logits ``(B, K, H / s, W / s)`` at some stride ``s`` (``info.output_stride``); resizing,
windows, scales and flips live in ``segbench.engine.inference``, not in the models.
Each built model carries a :class:`ModelInfo` as ``model.info``: what an evaluation
needs to know about it (normalisation, patch size, default crop and test window).
"""
from __future__ import annotations

import fnmatch
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Callable

import torch.nn as nn

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)
VIT_MEAN = (127.5, 127.5, 127.5)  # augreg ViT weights: mean = std = 0.5 on [0, 1]
VIT_STD = (127.5, 127.5, 127.5)


@dataclass(frozen=True)
class ModelInfo:
    """What travels with a model. Pixel statistics are on the 0-255 scale."""

    name: str
    family: str  # segmenter | setr | segformer | fcn | deeplabv3plus
    encoder: str
    decoder: str
    num_classes: int
    patch_size: int  # inputs are padded to a multiple of this inside the model
    output_stride: int  # logits come out at 1 / output_stride of the input
    crop_size: int  # the paper's training crop (ADE20K setting); also the test window
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    test_mode: str = "slide"  # the paper's single-scale protocol: "slide" or "whole"
    test_stride: int | None = None  # slide stride; None: crop_size - 32 (Segmenter's rule)
    # A user model's own test settings (segbench.models.custom); None: the paper protocol's.
    test_window: int | None = None  # slide window; None: crop_size
    test_scale: tuple[int, int] | None = None  # (long, short) keep-ratio test resize; None: the dataset's
    size_divisor: int | None = None  # round test sides up to a multiple of this

    def with_(self, **changes) -> "ModelInfo":
        return replace(self, **changes)


@dataclass(frozen=True)
class Family:
    """What segbench knows about a model family besides its builders, declared beside them
    (``register_family`` in the family's module) instead of as name comparisons elsewhere.
    The test protocols are the exception: they stay in one table with the official files
    they cite (``segbench.engine.protocols.FAMILY_RULES``), as the README's protocol table."""

    name: str  # ModelInfo.family
    recipe: str  # prefix of its paper recipes in segbench.engine.train.RECIPES ("<recipe>_<dataset kind>")
    drop_path: bool = False  # its builders take the recipe's stochastic depth (``drop_path=``)
    imagenet_vit_encoder: bool = False  # ImageNet ViT weights initialise its encoder (checkpoints.init_encoder_from_imagenet)
    mmseg_state_dict: Callable[[dict], dict] | None = None  # mmseg-format names -> ours; None: the shared renames


_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    if family.name in _FAMILIES:
        raise ValueError(f"model family {family.name!r} registered twice")
    _FAMILIES[family.name] = family
    return family


def family_of(name: str) -> Family | None:
    """The registered family ``name`` (a ModelInfo.family); None for user models."""
    _import_families()
    return _FAMILIES.get(name)


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator: register a variant under its function name."""
    if fn.__name__ in _REGISTRY:
        raise ValueError(f"model {fn.__name__!r} registered twice")
    _REGISTRY[fn.__name__] = fn
    return fn


def list_models(pattern: str = "*") -> list[str]:
    _import_families()
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def is_model(name: str) -> bool:
    _import_families()
    return name in _REGISTRY or ":" in name  # a user model (segbench.models.custom), checked when built


def create_model(name: str, num_classes: int, **kwargs) -> nn.Module:
    """Build a registered variant with random (or timm-initialised) weights; an ``arch``
    with ``:`` is a user model (``segbench.models.custom``)."""
    if ":" in name:
        from segbench.models import custom

        return custom.create(name, num_classes, **kwargs)
    _import_families()
    if name not in _REGISTRY:
        close = fnmatch.filter(_REGISTRY, f"*{name.split('_')[0]}*")[:8]
        hint = f" Similar names: {', '.join(close)}." if close else ""
        from segbench.errors import UnknownNameError

        raise UnknownNameError(f"unknown model {name!r}; `segbench models` lists them.{hint}")
    model = _REGISTRY[name](num_classes=num_classes, **kwargs)
    model.info = model.info.with_(name=name)
    return model


def _import_families() -> None:
    # Importing a family module runs its @register_model decorators; every module of
    # this package except the checkpoint converters and user models defines a family.
    import importlib
    import pkgutil

    for module in pkgutil.iter_modules(__path__):
        if module.name not in ("checkpoints", "custom"):
            importlib.import_module(f"{__name__}.{module.name}")


@contextmanager
def reference_paths(model: nn.Module):
    """Within the block, ``model`` computes as its paper specifies: the inference fast paths
    that compute the same function with less work (modules with ``fast_path = True``, e.g.
    SegFormer's fused decoder) are off. Profiling counts MACs this way, so they are the
    architecture's, whatever the fast paths save."""
    switched = [m for m in model.modules() if getattr(m, "fast_path", False)]
    for module in switched:
        module.fast_path = False
    try:
        yield model
    finally:
        for module in switched:
            module.fast_path = True


def describe_models(pattern: str = "*") -> list[dict]:
    """Name, sizes and settings of every matching variant (built on the meta device: no memory)."""
    import torch

    rows = []
    for name in list_models(pattern):
        with torch.device("meta"):
            model = create_model(name, num_classes=150)
        info = model.info
        count = lambda prefix: sum(p.numel() for n, p in model.named_parameters() if n.startswith(prefix))
        total = sum(p.numel() for p in model.parameters())
        rows.append({
            "name": name, "family": info.family, "encoder": info.encoder, "decoder": info.decoder,
            "params": total, "encoder_params": count("encoder."), "decoder_params": count("decoder."),
            "aux_params": count("aux_heads."),  # auxiliary heads: training only
            "crop_size": info.crop_size, "patch_size": info.patch_size, "output_stride": info.output_stride,
            "normalization": "vit (0.5, 0.5)" if info.mean == VIT_MEAN else "imagenet",
            "test_mode": info.test_mode,
        })
    return rows
