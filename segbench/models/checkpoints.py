"""Checkpoints: segbench's own format, loaded safely, with an honest report of what
matched. Files from outside are read with ``torch.load(weights_only=True)`` (or
safetensors), so loading never runs pickled code.
"""
from __future__ import annotations

import dataclasses
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from segbench.models import ModelInfo, create_model

SEGBENCH_FORMAT = "segbench-v1"


class CheckpointError(ValueError):
    """A checkpoint cannot be loaded as asked; the message says why and what to do."""


@dataclass
class LoadReport:
    path: str
    format: str
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)  # "key: checkpoint shape vs model shape"

    @property
    def complete(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self, limit: int = 10) -> str:
        parts = []
        for title, keys in (("missing", self.missing), ("unexpected", self.unexpected),
                            ("shape mismatch", self.mismatched)):
            if keys:
                shown = ", ".join(keys[:limit]) + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")
                parts.append(f"{title}: {shown}")
        return "; ".join(parts) or "all keys matched"


def read_file(path: str | os.PathLike) -> dict:
    """Load a checkpoint file's contents without executing code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors come in many types
        raise CheckpointError(
            f"{path}: refused to load: the file holds objects other than tensors and plain containers, "
            f"and segbench never unpickles code ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}). "
            "Re-save only the state dict, e.g. torch.save({'state_dict': model.state_dict()}, path).") from None


def load_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor], path: str, fmt: str,
                    allow_partial: bool = False) -> LoadReport:
    """Copy matching tensors into ``model``; refuse a partial load unless allowed."""
    own = model.state_dict()
    report = LoadReport(path=str(path), format=fmt)
    usable = {}
    for key, value in state_dict.items():
        if key not in own:
            report.unexpected.append(key)
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
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_model(arch: str, checkpoint: str | os.PathLike | None, num_classes: int,
               allow_partial: bool = False) -> tuple[nn.Module, LoadReport | None]:
    """Build ``arch`` and load ``checkpoint`` into it (format detected from the contents)."""
    model = create_model(arch, num_classes=num_classes)
    if checkpoint is None:
        return model, None
    payload = read_file(checkpoint)
    if payload.get("format") != SEGBENCH_FORMAT:
        raise CheckpointError(f"{checkpoint}: not a checkpoint format segbench recognises "
                              f"(top-level keys: {sorted(payload)[:8]})")
    saved = ModelInfo(**{k: tuple(v) if isinstance(v, list) else v for k, v in payload["info"].items()})
    if saved.name != arch:
        raise CheckpointError(f"{checkpoint}: holds a {saved.name} but the suite asks for {arch}")
    report = load_state_dict(model, payload["state_dict"], str(checkpoint), SEGBENCH_FORMAT, allow_partial)
    model.info = saved
    return model, report
