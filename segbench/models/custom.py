"""User models: a Python factory or a local HuggingFace folder, built like a registry model.

An ``arch`` that contains ``:`` names a model from outside the registry:

- ``my_pkg.my_module:build_model`` (imported from ``sys.path``) or
  ``path/to/file.py:build_model`` (relative to the suite file, or to the working directory
  on the command line): segbench calls ``build_model(num_classes=K, **args)``; it returns an
  ``nn.Module`` mapping a normalised ``(B, 3, H, W)`` batch to logits ``(B, K, h, w)``;
- ``hf:PATH``: a transformers ``AutoModelForSemanticSegmentation`` folder (``config.json``
  plus weights), read offline; mean / std from its ``preprocessor_config.json`` when present.

What the test protocol needs comes from the suite entry (``preprocess:`` / ``protocol:``) or
from an ``info`` attribute the model carries (a ``ModelInfo`` or a mapping with its field
names); the suite wins. A value the protocol needs that neither gives is an error naming the
key, never a default: there is no paper to take it from.

Every forward of a user model is checked (a 4-D floating tensor with K channels, finite
values); a failure is a :class:`CustomModelError` naming the suite file, line and model key.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import json
import math
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from segbench.errors import SegbenchError
from segbench.models import ModelInfo

FAMILY = "custom"
PREPROCESS_KEYS = ("mean", "std")
PROTOCOL_KEYS = ("test_mode", "crop_size", "test_window", "test_stride", "test_scale", "size_divisor")
HF_PREFIX = "hf:"


class CustomModelError(SegbenchError, ValueError):
    """A user model cannot be imported, built or run as segbench needs; names the suite entry."""


@dataclass(frozen=True)
class Source:
    """Where a user model comes from and what its suite entry says about it."""

    arch: str  # as written: module:func, path/file.py:func or hf:PATH
    base: Path  # the folder relative paths resolve against
    args: dict = field(default_factory=dict)  # keyword arguments of the factory
    settings: dict = field(default_factory=dict)  # preprocess / protocol values (ModelInfo names); None: not given
    where: str = ""  # "suite.yaml:12: models.mine", for messages

    def error(self, message: str) -> CustomModelError:
        return CustomModelError(f"{self.where or self.arch}: {message}")


# Sources of the suite entries read in this process, by the name jobs use as their arch.
_SOURCES: dict[str, Source] = {}


def is_custom(arch: str) -> bool:
    return ":" in arch


def register(arch: str, base: Path, args: dict, settings: dict, where: str) -> str:
    """Record a suite entry's model; returns the name its jobs build it by. The name holds
    the factory arguments and protocol settings, so they are part of every job's identity,
    and two entries of one factory with different arguments are two models."""
    settings = {k: v for k, v in settings.items() if v is not None}
    name = arch
    if args or settings:
        name += " " + json.dumps({"args": args, **settings}, sort_keys=True, separators=(",", ":"))
    _SOURCES[name] = Source(arch, base, dict(args), settings, where)
    return name


def source_of(name: str) -> Source:
    """The registered source, or (a MODEL on the command line) the arch alone, its paths
    relative to the working directory."""
    return _SOURCES.get(name) or Source(name, Path.cwd())


def fingerprint(name: str) -> str | None:
    """sha256 over what a user model is made of, for job identities: the factory's source file
    (``file.py:func``, or the module's file for ``module:func``) or every file of an ``hf:``
    folder (config and weights). An edited model file or re-saved folder is a new model, so its
    old records are not reused. None where the source cannot be found (reported when built)."""
    from segbench.identity import file_sha256

    source = source_of(name)
    target = source.arch[len(HF_PREFIX):] if source.arch.startswith(HF_PREFIX) else source.arch.rpartition(":")[0]
    if source.arch.startswith(HF_PREFIX):
        folder = (source.base / target).resolve()
        files = sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []
    elif target.endswith(".py") or "/" in target:
        files = [(source.base / target).resolve()]
    else:
        spec = importlib.util.find_spec(target.split(".")[0]) and importlib.util.find_spec(target)
        files = [Path(spec.origin)] if spec is not None and spec.origin else []
    files = [f for f in files if f.is_file()]
    if not files:
        return None
    digest = hashlib.sha256()
    for f in files:
        digest.update(f"{f.name}:{file_sha256(f)}\n".encode())
    return digest.hexdigest()


def carries_weights(arch: str) -> bool:
    """An ``hf:`` folder holds its trained weights; a factory builds untrained ones."""
    return arch.startswith(HF_PREFIX)


def create(name: str, num_classes: int, **kwargs) -> nn.Module:
    """Build a user model (random or factory-initialised weights), with ``model.info`` and checked forwards."""
    source = source_of(name)
    if num_classes < 1:
        raise source.error(f"asked to build it for {num_classes} classes; give the class count (a folder "
                           "dataset's is its classes file's; on the command line, --num-classes)")
    if source.arch.startswith(HF_PREFIX):
        model, found = _build_hf(source, num_classes)
    else:
        model = _build_factory(source, num_classes, kwargs)
        found = _info_fields(getattr(model, "info", None), source)
    model.info = _resolve_info(name, source, num_classes, found)
    model.forward = types.MethodType(_checked_forward, model)
    model.segbench_source = source.where or source.arch
    return model


def load(name: str, checkpoint, num_classes: int, allow_partial: bool = False):
    """``checkpoints.load_model`` for a user model: a segbench checkpoint of it, or a plain
    ``state_dict`` file (``{"state_dict": ...}`` or the bare mapping), read without pickle."""
    from segbench.models.checkpoints import SEGBENCH_FORMAT, CheckpointError, _is_state_dict, load_state_dict, read_file

    if checkpoint is None:  # the factory's own initialisation (the runner seeds it for `weights: random`)
        return create(name, num_classes).eval(), None
    model = create(name, num_classes)
    payload = read_file(checkpoint)
    if isinstance(payload, dict) and payload.get("format") == SEGBENCH_FORMAT:
        # Not checked by name: the protocol settings in the name may change without the weights
        # changing; the keys and shapes of the weights are checked below.
        fmt, state_dict = SEGBENCH_FORMAT, payload["state_dict"]
    else:
        state_dict = payload.get("state_dict", payload) if isinstance(payload, dict) else None
        if not _is_state_dict(state_dict):
            raise CheckpointError(f"{checkpoint}: neither a segbench checkpoint nor a state_dict of tensors "
                                  "(save one with torch.save(model.state_dict(), path) or safetensors)")
        fmt = "state_dict"
        if isinstance(model, HFSegmentation) and not any(k.startswith("model.") for k in state_dict):
            state_dict = {f"model.{k}": v for k, v in state_dict.items()}  # the transformers model's own keys
    report = load_state_dict(model, state_dict, str(checkpoint), fmt, allow_partial)
    return model.eval(), report


# --- factories -------------------------------------------------------------------------

def _import_factory(source: Source):
    target, _, func = source.arch.rpartition(":")
    if not target or not func:
        raise source.error(f"arch {source.arch!r}: expected module:function or path/file.py:function")
    try:
        if target.endswith(".py") or "/" in target:
            path = (source.base / target).resolve()
            if not path.is_file():
                raise source.error(f"arch {source.arch!r}: no file {path}")
            # one module per file version: an edited file is imported again, an unchanged one once
            version = f"{path}:{path.stat().st_mtime_ns}".encode()
            module_name = f"segbench_user_{hashlib.sha256(version).hexdigest()[:12]}_{path.stem}"
            module = sys.modules.get(module_name)
            if module is None:
                spec = importlib.util.spec_from_file_location(module_name, path)
                module = importlib.util.module_from_spec(spec)
                sys.modules[module_name] = module
                try:
                    spec.loader.exec_module(module)
                except BaseException:
                    del sys.modules[module_name]
                    raise
        else:
            module = importlib.import_module(target)
    except CustomModelError:
        raise
    except Exception as exc:
        raise source.error(f"arch {source.arch!r}: importing {target} failed: {type(exc).__name__}: {exc}") from exc
    factory = getattr(module, func, None)
    if not callable(factory):
        raise source.error(f"arch {source.arch!r}: {target} has no function {func!r}")
    return factory


def _build_factory(source: Source, num_classes: int, kwargs: dict) -> nn.Module:
    factory = _import_factory(source)
    try:
        model = factory(num_classes=num_classes, **source.args, **kwargs)
    except Exception as exc:
        raise source.error(f"{source.arch}(num_classes={num_classes}, **{source.args}) raised "
                           f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise source.error(f"{source.arch} returned {type(model).__name__}, not a torch.nn.Module")
    return model


class HFSegmentation(nn.Module):
    """A transformers semantic-segmentation model as segbench calls models: batch in, logits out."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        # BEiT / DPT-style position embeddings: interpolated for inputs other than the config's size
        import inspect

        self.interpolate = "interpolate_pos_encoding" in inspect.signature(model.forward).parameters

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        extra = {"interpolate_pos_encoding": True} if self.interpolate else {}
        return self.model(pixel_values=x, **extra).logits


def _build_hf(source: Source, num_classes: int) -> tuple[nn.Module, dict]:
    folder = (source.base / source.arch[len(HF_PREFIX):]).resolve()
    if not (folder / "config.json").is_file():
        raise source.error(f"arch {source.arch!r}: {folder} has no config.json (a folder written by "
                           "save_pretrained of a transformers semantic-segmentation model)")
    from transformers import AutoConfig, AutoModelForSemanticSegmentation
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # its bars would interleave with segbench's own progress display
    try:
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
        if config.num_labels != num_classes:
            raise source.error(f"{folder}: the model predicts {config.num_labels} classes but the dataset has "
                               f"{num_classes}; evaluate it on a dataset with its classes, or set num_classes")
        # float32 whatever the saved dtype: segbench feeds float32 batches (amp is its own setting)
        if torch.empty(0).device.type == "meta":  # costs and shapes only: no need to read the weights
            model = AutoModelForSemanticSegmentation.from_config(config, dtype=torch.float32)
        else:
            model = AutoModelForSemanticSegmentation.from_pretrained(folder, local_files_only=True,
                                                                     dtype=torch.float32)
    except CustomModelError:
        raise
    except Exception as exc:
        raise source.error(f"{folder}: transformers could not load it: {type(exc).__name__}: {exc}") from exc
    found = {}
    processor = folder / "preprocessor_config.json"
    if processor.is_file():
        found = _hf_normalisation(json.loads(processor.read_text()))
    return HFSegmentation(model), found


def _hf_normalisation(config: dict) -> dict:
    """mean / std on the 0-255 scale of an image processor that rescales by r, then normalises."""
    rescale = config.get("rescale_factor", 1 / 255) if config.get("do_rescale", True) else 1.0
    if not config.get("do_normalize", True):
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    elif "image_mean" in config and "image_std" in config:
        mean, std = config["image_mean"], config["image_std"]
    else:
        return {}
    return {"mean": tuple(m / rescale for m in mean), "std": tuple(s / rescale for s in std)}


# --- settings ----------------------------------------------------------------------------

def _info_fields(info, source: Source) -> dict:
    """The protocol values a model's ``info`` attribute gives (ModelInfo or mapping)."""
    if info is None:
        return {}
    if dataclasses.is_dataclass(info):
        info = dataclasses.asdict(info)
    if not isinstance(info, dict):
        raise source.error(f"the model's info attribute is a {type(info).__name__}; give a ModelInfo or a "
                           f"mapping with keys among {', '.join(PREPROCESS_KEYS + PROTOCOL_KEYS)}")
    return {k: v for k, v in info.items() if k in PREPROCESS_KEYS + PROTOCOL_KEYS and v is not None}


def _resolve_info(name: str, source: Source, num_classes: int, found: dict) -> ModelInfo:
    values = {**found, **source.settings}

    def need(key: str, why: str):
        if values.get(key) is None:
            block = "preprocess" if key in PREPROCESS_KEYS else "protocol"
            raise source.error(f"{block}.{key} is needed ({why}) and neither the suite entry nor the model's "
                               f"info attribute gives it; set `{block}: {{{key}: ...}}` in the model entry")
        return values[key]

    for key in PREPROCESS_KEYS:
        value = need(key, "images are normalised as (x - mean) / std on the 0-255 scale")
        if len(value) != 3:
            raise source.error(f"preprocess.{key}: expected 3 values (R, G, B), got {list(value)}")
    mode = need("test_mode", "whole image or sliding window")
    if mode not in ("whole", "slide"):
        raise source.error(f"protocol.test_mode: 'whole' or 'slide', got {mode!r}")
    if mode == "slide":
        if values.get("test_window") is None:
            need("crop_size", "the sliding window is test_window, or the training crop")
        need("test_stride", "the sliding window's stride")
    scale = values.get("test_scale")
    if scale is not None and len(scale) != 2:
        raise source.error(f"protocol.test_scale: expected [long side, short side], got {list(scale)}")
    return ModelInfo(
        name=name, family=FAMILY, encoder=source.arch, decoder="", num_classes=num_classes,
        patch_size=1, output_stride=1, crop_size=values.get("crop_size") or 0,
        mean=tuple(float(v) for v in values["mean"]), std=tuple(float(v) for v in values["std"]),
        test_mode=mode, test_stride=values.get("test_stride"), test_window=values.get("test_window"),
        test_scale=tuple(scale) if scale is not None else None, size_divisor=values.get("size_divisor"))


# --- checked forwards ------------------------------------------------------------------------

def _checked_forward(self: nn.Module, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """The model's own forward, then the checks segbench's protocols rely on. Bound to the
    instance (``types.MethodType``) so that copies of the model stay checked."""
    where = self.segbench_source
    try:
        out = type(self).forward(self, x, *args, **kwargs)
    except Exception as exc:
        raise CustomModelError(f"{where}: the model failed on an input of shape {tuple(x.shape)}: "
                               f"{type(exc).__name__}: {exc}") from exc
    k = self.info.num_classes
    if not isinstance(out, torch.Tensor) or out.ndim != 4 or not out.is_floating_point():
        got = (f"a {out.dtype} tensor of shape {tuple(out.shape)}" if isinstance(out, torch.Tensor)
               else type(out).__name__)
        raise CustomModelError(f"{where}: the model returned {got}; expected float logits (B, {k}, h, w)")
    if out.shape[0] != x.shape[0] or out.shape[1] != k:
        raise CustomModelError(f"{where}: the model returned logits of shape {tuple(out.shape)} for an input of "
                               f"{tuple(x.shape)}; expected ({x.shape[0]}, {k}, h, w): {k} classes")
    if out.device.type != "meta" and not torch.isfinite(out).all():
        bad = int((~torch.isfinite(out)).sum())
        raise CustomModelError(f"{where}: the model returned {bad} NaN or infinite logits for an input of "
                               f"{tuple(x.shape)}")
    return out


def probe(name: str, num_classes: int) -> None:
    """Build the model on the meta device and run one forward there (no memory, no compute):
    import, factory and settings errors, and outputs of the wrong rank, type or class count,
    show when the suite is read. A factory that cannot build on the meta device (one that
    reads weights, say) is built for real instead, without a forward; a forward the meta
    device cannot run is left to the run."""
    try:
        with torch.device("meta"):
            model = create(name, num_classes).eval()
    except CustomModelError as exc:
        if exc.__cause__ is None:  # a settings error: the same on any device
            raise
        create(name, num_classes)  # raises again if the factory fails off the meta device too
        return
    side = model.info.test_window or model.info.crop_size or 64
    side = math.ceil(side / (model.info.size_divisor or 1)) * (model.info.size_divisor or 1)
    try:
        with torch.device("meta"), torch.no_grad():
            model(torch.empty(1, 3, side, side))
    except CustomModelError as exc:
        if exc.__cause__ is None:  # the output check itself, not the model failing on the meta device
            raise
