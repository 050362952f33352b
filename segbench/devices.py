"""The device a job runs on: names checked once, and the helpers every timing needs."""
from __future__ import annotations

import re

import torch

from segbench.errors import SegbenchError

DEVICE_NAMES = "auto | cpu | cuda | cuda:N"
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


class DeviceError(SegbenchError):
    """A device name that is not one, or a device this machine does not have."""


def device_problem(name: str) -> str | None:
    """Why ``name`` cannot be used on this machine, or None."""
    if not isinstance(name, str) or not _DEVICE.fullmatch(name):
        return f"expected {DEVICE_NAMES}, got {name!r}"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            return f"{name!r} asked for, but torch sees no CUDA device on this machine; use cpu or auto"
        index = int(name.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            return f"{name!r} asked for, but this machine has {torch.cuda.device_count()} CUDA device(s)"
    return None


def resolve_device(name: str, where: str = "--device") -> str:
    """``auto`` -> cuda if there is one, else cpu; any other name checked (DeviceError naming ``where``)."""
    problem = device_problem(name)
    if problem:
        raise DeviceError(f"{where}: {problem}")
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def synchronize(device) -> None:
    """Wait for queued kernels, so a timer around it measures the work, not the launch."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device) -> str:
    """The GPU's name, or the CPU's as the platform reports it."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(device)
    import platform

    return platform.processor() or platform.machine()


# Mixed precision, in the vocabulary of `--amp` / `amp:` (evaluation and training).
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
