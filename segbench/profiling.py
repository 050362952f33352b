"""Profiling: parameters, multiply-accumulates (attention included), latency, throughput and
peak memory of a registered model at one input size. ``profile_model`` returns the fields a
``profile`` record holds (``input``, ``metrics``, ``profile``); the record says which tool
produced each number (``profile.counters``).

Conventions:

- ``macs``: multiply-accumulates of the inference forward ``model(x)`` (the main head; SETR's
  auxiliary heads are training-only and not run) as the architecture specifies it (inference
  fast paths that compute the same function with less work, such as SegFormer's fused
  decoder, are off while counting: ``models.reference_paths``), per image, counted by PyTorch's
  ``torch.utils.flop_counter.FlopCounterMode`` (its total / 2: it counts a multiply-add as 2
  FLOPs). It counts convolutions and matrix products, attention included
  (``scaled_dot_product_attention`` and explicit ``q @ k``), not element-wise work (norms,
  activations, softmax, bias adds, resizing). Attention has one formula of segbench's for
  every SDPA kernel torch may dispatch to (``ATTENTION_FORMULAS``: torch's own counter misses
  some, e.g. 2.14's CPU kernel), so the count does not depend on the torch version or device;
  an attention operator without a formula is an error (``UncountedOperatorError``). It runs on the meta device: shapes only, no
  memory and no arithmetic, so ViT-L at 640 x 640 takes about a second. On SegFormer this
  reproduces the paper's tables (mmcv's module counter plus attention) to 0.5 % or better.
- ``macs_fvcore``: fvcore's ``FlopCountAnalysis`` total (fvcore's "flop" is one multiply-add)
  on a real forward at batch 1. fvcore adds norms and upsampling but skips operators it has
  no handler for, ``scaled_dot_product_attention`` among them; ``fvcore_skipped_ops`` lists
  them with their call counts. mmseg 1.x's ``get_flops`` traces the model the same way.
- latency: the forward of one batch of ``batch_size`` images, after ``warmup`` untimed
  forwards, ``runs`` times; median and 10th / 90th percentiles. On CUDA each forward is
  timed with CUDA events; on CPU with ``time.perf_counter`` (a CPU forward is synchronous).
  ``batch_size="max"`` doubles the batch while it fits in memory (the Segmenter paper's
  images-per-second protocol: "we maximize the batch size allowed by memory").
- pipeline throughput: the full test-time protocol of the model's paper on the given dataset
  (``engine.protocols.paper_protocol`` + ``engine.inference.predict``: resize, whole image or
  windows, upsampling to the image size, argmax), one image of the given size at a time.
- peak memory: on CUDA the allocator's peak (``torch.cuda.max_memory_allocated``: weights,
  activations and workspaces, not the CUDA context); on CPU the process's peak resident
  memory (interpreter and libraries included) during the timed forwards, from VmHWM after
  resetting it through ``/proc/self/clear_refs``; where that is unavailable ``ru_maxrss``,
  which covers the whole process lifetime (the record says which).

Weights are randomly initialised: none of these numbers depends on their values.
"""
from __future__ import annotations

import math
import re
import resource
import sys
import time
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from segbench.devices import device_name, synchronize
from segbench.models import create_model, reference_paths

MB = 2 ** 20
MAX_BATCH_SIZE = 1024  # where the "max" batch search stops even if memory allows more


def parse_size(text: str) -> tuple[int, int]:
    """'512x1024' -> (512, 1024) as (height, width); '512' -> (512, 512)."""
    match = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+))?\s*", str(text))
    if not match or int(match[1]) == 0 or (match[2] is not None and int(match[2]) == 0):
        raise ValueError(f"input size must be HEIGHTxWIDTH (e.g. 512x512) or one side (512), got {text!r}")
    height = int(match[1])
    return height, int(match[2]) if match[2] else height


def parse_batch_size(value) -> int | str:
    """A positive number of images, or "max" (the largest batch that fits in memory)."""
    if value == "max":
        return "max"
    if isinstance(value, bool) or not str(value).isdigit() or int(value) < 1:
        raise ValueError(f"batch size must be a positive integer or 'max', got {value!r}")
    return int(value)


def count_params(model: nn.Module) -> dict[str, int]:
    """Parameter counts: total, and under the top-level ``encoder.``, ``decoder.`` and
    ``aux_heads.`` (auxiliary heads: training only)."""
    def under(prefix: str) -> int:
        return sum(p.numel() for name, p in model.named_parameters() if name.startswith(prefix))

    return {"params": under(""), "params_encoder": under("encoder."), "params_decoder": under("decoder."),
            "params_aux": under("aux_heads.")}


def _sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs (2 per multiply-add) of attention on (..., L, E) queries, (..., S, E) keys and
    (..., S, Ev) values: Q K^T (L S E multiply-adds) and softmax(.) V (L S Ev) per batch and
    head. Key/value heads fewer than the query's (grouped-query attention) are broadcast."""
    *batch, length, dim = query_shape
    source, value_dim = key_shape[-2], value_shape[-1]
    return 2 * math.prod(batch) * length * source * (dim + value_dim)


# Every scaled_dot_product_attention kernel that takes (query, key, value) first, in the
# (batch, heads, length, dim) layout. Which one F.scaled_dot_product_attention dispatches to
# depends on the torch version, the device and the inputs (torch 2.14's CPU kernel is
# ``_scaled_dot_product_flash_attention_for_cpu``, which its FlopCounterMode does not count;
# the meta device takes the math path: bmm, counted as matrix products). One formula for all
# of them, so the count does not depend on the kernel; names this torch lacks are skipped.
SDPA_KERNELS = ("_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention",
                "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention",
                "_scaled_dot_product_fused_attention_overrideable", "_scaled_dot_product_attention_math_for_mps")
ATTENTION_FORMULAS = {getattr(torch.ops.aten, name): _sdpa_flops for name in SDPA_KERNELS
                      if hasattr(torch.ops.aten, name)}


class UncountedOperatorError(RuntimeError):
    """An attention operator ran that the MAC counter has no formula for (a kernel this
    version of segbench does not know): the count would silently leave attention out."""


class _UncountedAttentionGuard(TorchDispatchMode):
    """Entered outside a FlopCounterMode, it sees each operator the counter executes after
    its own decompositions, i.e. exactly the operators the counter counts or skips; an
    attention operator the counter has no formula for is an error naming it."""

    def __init__(self, registry: dict):
        super().__init__()
        self.registry = registry

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        packet = func._overloadpacket
        if "attention" in str(packet) and packet not in self.registry:
            raise UncountedOperatorError(
                f"MAC counting: {packet} ran but has no FLOP formula (torch {torch.__version__}), so attention would "
                f"be left out of the count; add it to segbench.profiling.ATTENTION_FORMULAS")
        return func(*args, **(kwargs or {}))


def count_macs(model: nn.Module, height: int, width: int) -> tuple[int, list[dict], dict[str, int]]:
    """Multiply-accumulates of ``model(x)`` for one ``(1, 3, height, width)`` input on the
    model's device (build the model on the meta device to count without memory or compute).
    Attention is counted whichever kernel torch dispatches to (``ATTENTION_FORMULAS``); an
    attention operator without a formula raises ``UncountedOperatorError``.

    Returns the total, a per-module breakdown (``by_module_rows``) and the total per operator.
    """
    device = next(model.parameters()).device
    x = torch.empty(1, 3, height, width, device=device)
    counter = FlopCounterMode(display=False, custom_mapping=ATTENTION_FORMULAS)
    with _UncountedAttentionGuard(counter.flop_registry), counter, torch.no_grad(), reference_paths(model):
        model.eval()(x)
    counts = counter.get_flop_counts()
    by_operator = {str(op): flops // 2 for op, flops in counts.get("Global", {}).items()}
    return counter.get_total_flops() // 2, by_module_rows(model, counts), by_operator


def by_module_rows(model: nn.Module, counts: dict[str, dict]) -> list[dict]:
    """MACs and parameters of the top-level parts (encoder, decoder, ...), their children,
    and the items of containers among those (stages, blocks), in module order.

    ``counts`` is ``FlopCounterMode.get_flop_counts()``: FLOPs per operator under each called
    module, named ``<root class>.<module path>``; a module that is never called itself (a
    ModuleList of blocks) gets the sum of its children.
    """
    root = type(model).__name__
    called = {name[len(root) + 1:]: sum(ops.values()) // 2 for name, ops in counts.items()
              if name.startswith(root + ".")}
    modules = dict(model.named_modules())

    def macs(name: str) -> int:
        if name in called:
            return called[name]
        return sum(macs(f"{name}.{child}") for child, _ in modules[name].named_children())

    rows = []
    for name, module in modules.items():
        if not name:
            continue
        depth = name.count(".") + 1
        parent = modules[name.rsplit(".", 1)[0]] if depth > 1 else model
        if depth <= 2 or (depth == 3 and isinstance(parent, (nn.ModuleList, nn.Sequential))):
            params = sum(p.numel() for p in module.parameters())
            rows.append({"name": name, "macs": macs(name), "params": params})
    return rows


def count_macs_fvcore(model: nn.Module, x: torch.Tensor) -> tuple[int, dict[str, int]]:
    """fvcore's count for ``model(x)`` (a real forward, traced with torch.jit) and the
    operators it skipped (no handler), with how often each was called."""
    with torch.no_grad(), warnings.catch_warnings(), reference_paths(model):
        warnings.simplefilter("ignore")  # torch.jit deprecation and tracer warnings (data-dependent shapes)
        from fvcore.nn import FlopCountAnalysis

        analysis = FlopCountAnalysis(model.eval(), x)
        analysis.unsupported_ops_warnings(False)
        analysis.uncalled_modules_warnings(False)
        analysis.tracer_warnings("none")
        total = analysis.total()
    return int(total), dict(sorted(analysis.unsupported_ops().items()))


# --- memory ---------------------------------------------------------------------------

def _proc_status_mb(field: str) -> float | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    match = re.search(rf"^{field}:\s+(\d+) kB", text, re.M)
    return int(match[1]) / 1024 if match else None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return _proc_status_mb("VmHWM") is not None


def _ru_maxrss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / MB if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def available_memory_mb(device: torch.device) -> float | None:
    """Free memory the next allocation can use: CUDA free memory, or MemAvailable."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0] / MB
    try:
        match = re.search(r"^MemAvailable:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
    except OSError:
        return None
    return int(match[1]) / 1024 if match else None


@contextmanager
def peak_memory(device: torch.device):
    """Yields a dict that holds, on exit, the peak memory of the block: ``kind``,
    ``method``, ``baseline_mb`` (at entry), ``peak_mb`` and ``increase_mb``."""
    result: dict = {}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        result.update(kind="cuda_allocator_peak", baseline_mb=torch.cuda.memory_allocated(device) / MB,
                      method="torch.cuda.max_memory_allocated after reset_peak_memory_stats: tensors "
                             "(weights, activations, workspaces), not the CUDA context")
        yield result
        torch.cuda.synchronize(device)
        result["peak_mb"] = torch.cuda.max_memory_allocated(device) / MB
    else:
        reset = _reset_peak_rss()
        result.update(kind="process_peak_rss", baseline_mb=_proc_status_mb("VmRSS") if reset else None,
                      method="VmHWM of /proc/self/status reset through /proc/self/clear_refs at the start: "
                             "the process's peak resident memory during the block (interpreter, libraries, "
                             "weights and activations)" if reset else
                             "ru_maxrss: the process's peak resident memory over its whole lifetime, "
                             "possibly reached before the block")
        yield result
        result["peak_mb"] = _proc_status_mb("VmHWM") if reset else _ru_maxrss_mb()
    baseline = result["baseline_mb"]
    result["increase_mb"] = None if baseline is None else result["peak_mb"] - baseline


def _is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc) \
        or "can't allocate memory" in str(exc)


# --- timing -----------------------------------------------------------------------------

def _autocast(device: torch.device, amp: bool):
    # float16 on CUDA (what the papers' V100 numbers would use under AMP); CPUs autocast to bfloat16
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype) if amp else nullcontext()


def time_calls(fn, device: torch.device, warmup: int, runs: int) -> list[float]:
    """Milliseconds of each of ``runs`` calls of ``fn()`` after ``warmup`` untimed calls;
    CUDA events on a CUDA device (synchronised after each call), perf_counter on CPU."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    samples = []
    for _ in range(runs):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            samples.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1e3)
    return samples


def _make_input(batch: int, height: int, width: int, device: torch.device, channels_last: bool) -> torch.Tensor:
    x = torch.randn(batch, 3, height, width, device=device)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def largest_batch(model: nn.Module, height: int, width: int, device: torch.device, amp: bool = False,
                  channels_last: bool = False, limit: int = MAX_BATCH_SIZE) -> tuple[int, dict]:
    """The largest power-of-two batch whose forward fits in memory (up to ``limit``).

    Before each doubling the memory the forward added at the current batch, doubled, must be
    below the free memory (so a CPU run never reaches the OOM killer); an out-of-memory error
    stops the search too. Returns the batch and {tried, stop}.
    """
    batch, tried, stop = 1, [], "limit"
    while True:
        try:
            with peak_memory(device) as memory, torch.inference_mode(), _autocast(device, amp):
                model(_make_input(batch, height, width, device, channels_last))
        except RuntimeError as exc:
            if not _is_out_of_memory(exc) or batch == 1:
                raise
            if device.type == "cuda":
                torch.cuda.empty_cache()
            tried.append({"batch_size": batch, "fits": False})
            batch //= 2
            stop = "out of memory"
            break
        tried.append({"batch_size": batch, "fits": True, "increase_mb": memory["increase_mb"]})
        free = available_memory_mb(device)
        if batch * 2 > limit:
            break
        if free is not None and memory["increase_mb"] is not None and 2 * memory["increase_mb"] >= 0.9 * free:
            stop = "free memory"
            break
        batch *= 2
    return batch, {"tried": tried, "stop": stop, "limit": limit}


def pipeline_throughput(model: nn.Module, dataset_kind: str, height: int, width: int, device: torch.device,
                        warmup: int, runs: int, amp: bool = False) -> dict:
    """Images per second of the full single-scale test protocol of the model's paper on
    ``dataset_kind``, one (height, width) image at a time, as ``segbench eval`` times it
    (``predict`` + argmax + copy to the CPU; reading images and metrics excluded)."""
    from segbench.data.datasets import DATASETS
    from segbench.engine.protocols import paper_protocol
    from segbench.engine.inference import predict

    protocol = paper_protocol(model.info, DATASETS[dataset_kind])
    image = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)

    def once():
        with _autocast(device, amp):
            predict(model, image, protocol, model.info.num_classes, device).argmax(0).cpu()

    samples = time_calls(once, device, warmup, runs)
    return {"dataset": dataset_kind, "protocol": asdict(protocol), "warmup": warmup, "runs": runs,
            "samples_ms": samples, "images_per_second": 1e3 / float(np.median(samples))}


# --- one model ------------------------------------------------------------------------

def profile_model(arch: str, num_classes: int, height: int, width: int, *, device: str = "cpu",
                  batch_size: int | str = 1, warmup: int = 5, runs: int = 20, dataset: str = "ade20k",
                  pipeline: bool = True, fvcore: bool = True, amp: bool = False, channels_last: bool = False,
                  batch_limit: int = MAX_BATCH_SIZE) -> dict:
    """Profile the registered model ``arch`` at ``height`` x ``width``; returns the record
    fields ``input``, ``metrics`` and ``profile`` (schema: README, "Profiling").

    Parameters and MACs are counted on the meta device; a real model is built only for
    fvcore (``fvcore=True``) and timing (``runs > 0``), on ``device``.
    """
    batch_size = parse_batch_size(batch_size)
    with torch.device("meta"):
        meta_model = create_model(arch, num_classes=num_classes).eval()
    params = count_params(meta_model)
    macs, by_module, by_operator = count_macs(meta_model, height, width)
    del meta_model
    torch_device = torch.device(device)
    metrics = {**params, "macs": macs, "macs_fvcore": None, "latency_ms": None, "latency_ms_p10": None,
               "latency_ms_p90": None, "images_per_second": None, "pipeline_images_per_second": None,
               "peak_memory_mb": None}
    counters = {
        "params": "parameter sizes summed under the top-level encoder. / decoder. / aux_heads. prefixes",
        "macs": f"torch.utils.flop_counter.FlopCounterMode total / 2 (torch {torch.__version__}), inference "
                f"forward model(x) at batch 1 on the meta device; convolutions and matrix products incl. attention",
        "macs_fvcore": "not computed (fvcore off)",
        "latency_ms": "not measured (runs = 0)",
        "pipeline_images_per_second": "not measured",
        "peak_memory_mb": "not measured",
    }
    profile = {"counters": counters, "macs_by_operator": by_operator, "fvcore_skipped_ops": None,
               "by_module": by_module, "latency": None, "pipeline": None, "memory": None,
               "weights": "random initialisation (costs do not depend on weight values)"}
    model = None
    if fvcore or runs > 0:
        torch.manual_seed(0)
        model = create_model(arch, num_classes=num_classes).eval().to(torch_device)
    if fvcore:
        metrics["macs_fvcore"], profile["fvcore_skipped_ops"] = count_macs_fvcore(
            model, torch.randn(1, 3, height, width, device=torch_device))
        counters["macs_fvcore"] = (f"fvcore FlopCountAnalysis total (one flop = one multiply-add), real forward at "
                                   f"batch 1 on {device}; skips the operators in profile.fvcore_skipped_ops")
    if runs > 0:
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        search = None
        if batch_size == "max":
            batch_size, search = largest_batch(model, height, width, torch_device, amp, channels_last, batch_limit)
        x = _make_input(batch_size, height, width, torch_device, channels_last)
        with peak_memory(torch_device) as memory, torch.inference_mode(), _autocast(torch_device, amp):
            samples = time_calls(lambda: model(x), torch_device, warmup, runs)
        median = float(np.median(samples))
        metrics.update(latency_ms=median, latency_ms_p10=float(np.percentile(samples, 10)),
                       latency_ms_p90=float(np.percentile(samples, 90)), images_per_second=batch_size * 1e3 / median,
                       peak_memory_mb=memory["peak_mb"])
        clock = "CUDA events" if torch_device.type == "cuda" else "time.perf_counter"
        timer = f"{clock} around each forward"
        counters["latency_ms"] = f"{timer}: median of {runs} forwards of {batch_size} image(s) after {warmup} warm-up"
        counters["peak_memory_mb"] = f"{memory['kind']} during the timed forwards"
        profile["latency"] = {"device": str(torch_device), "device_name": device_name(torch_device),
                              "threads": torch.get_num_threads(), "warmup": warmup, "runs": runs,
                              "batch_size": batch_size, "batch_search": search, "samples_ms": samples,
                              "timer": timer}
        profile["memory"] = memory
        if pipeline:
            profile["pipeline"] = pipeline_throughput(model, dataset, height, width, torch_device, warmup, runs, amp)
            metrics["pipeline_images_per_second"] = profile["pipeline"]["images_per_second"]
            counters["pipeline_images_per_second"] = (f"1000 / median ms of predict() + argmax ({clock}), one "
                                                      f"image per call; {profile['pipeline']['protocol']['source']}")
    dtype = "float32" if not amp else ("float16" if torch_device.type == "cuda" else "bfloat16")
    return {"input": {"height": height, "width": width, "batch_size": batch_size, "dtype": dtype,
                      "channels_last": channels_last},
            "metrics": metrics, "profile": profile}

