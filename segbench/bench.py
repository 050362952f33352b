"""``segbench bench``: segbench's speed against the reference implementations, measured in
one run on one machine, with the outputs compared so that speed never comes from
computing something else.

- Forward passes, ours against a reference with the same weights: SegFormer-B0 and B2
  against HF transformers' ``SegformerForSemanticSegmentation`` (random HF weights with
  random norm statistics, converted by ``convert_hf_state_dict``), and the ViT encoders of
  Segmenter and SETR against timm's ``VisionTransformer`` (our weights loaded into it);
  the full Segmenter / SETR model beside its encoder shows what the decoder adds.
- Timing: ``rounds`` rounds, each timing every contestant of a comparison (``calls``
  forwards after the warm-up, median), in alternating order; the speed-up is the median
  over rounds of reference time / our time, with its min and max over rounds.
- Efficiency: the architecture's multiply-accumulates (``profiling.count_macs``, fast paths
  off) per second, divided by the MACs per second of a large matrix product measured in the
  same run: how close to the machine's practical limit a model runs. SegFormer's fused
  decoder does less work than its architecture specifies, so its efficiency can pass 100 %;
  ``executed_gmacs`` says how much work the forward really does.
- The evaluation pipeline on the synthetic set (single scale, multi-scale + flip): images
  per second of the loop (reading, predicting, metrics), and the time of ``predict`` next to
  the sum of the model's forward passes inside it (timed one by one): what resizing,
  windows, flips and merging add; and the time each evaluator's ``process`` takes per
  image, with the share the boundary and calibration evaluators add to the evaluation
  without them (``added_metrics_fraction``).
- The cost of those added metrics where it matters: a SegFormer-B0 single-scale evaluation
  (its Cityscapes protocol: 1024 x 1024 windows, stride 768) of Cityscapes-sized scenes
  (1024 x 2048, 19 classes), every standard evaluator on, each one timed.
- Scale (segbench.bench_pipeline): the whole evaluation loop against mmsegmentation 1.2.2's
  with the same weights, corruption generation against a plain imagecorruptions loop, and
  peak memory of a 100- and a 2000-image evaluation.

Weights are random: no number here depends on their values.
"""
from __future__ import annotations

import os
import tempfile
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from segbench.bench_pipeline import bench_scale
from segbench.data.datasets import CITYSCAPES_CLASSES, Sample, SegDataset, Synthetic
from segbench.devices import AMP_DTYPES, device_name, synchronize
from segbench.engine.evaluate import evaluate, standard_evaluators
from segbench.engine.protocols import paper_protocol
from segbench.models import create_model
from segbench.models.segformer import convert_hf_state_dict, segformer_from_hf_config
from segbench.models.segmenter import map_to_tokens
from segbench.profiling import count_macs, time_calls

HF_SEGFORMER = {"b0": {}, "b2": {"hidden_sizes": [64, 128, 320, 512], "depths": [3, 4, 6, 3],
                                 "decoder_hidden_size": 768}}
# (our model, its encoder's LayerNorm eps, timm's ViT of the same shape, final norm)
VIT_ENCODERS = {"segmenter": ("segmenter_b16_mask", 1e-5, "vit_base_patch16_224", True),
                "setr": ("setr_b16_pup", 1e-6, "vit_base_patch16_224", False)}
PIPELINE_MODELS = ("segformer_b0", "segmenter_t16_mask")
QUICK_PIPELINE_MODELS = ("segformer_micro", "segmenter_micro_p8_mask")
ADDED_METRICS_SCENE = ("segformer_b0", (1024, 2048))  # model, scene (height, width): a Cityscapes image
QUICK_ADDED_METRICS_SCENE = ("segformer_micro", (128, 256))


@dataclass
class Settings:
    device: str = "cpu"
    size: int = 512
    rounds: int = 5
    calls: int = 1
    warmup: int = 1
    num_classes: int = 150
    images: int = 4  # synthetic images per pipeline run
    pipeline_models: tuple[str, ...] = PIPELINE_MODELS
    added_metrics_scene: tuple = ADDED_METRICS_SCENE
    workers: int = 0
    amp: str | None = None
    compile: bool = False
    matmul_size: int | None = None  # default: 2048 on CPU, 8192 on CUDA
    scale: bool = True  # the bench_pipeline measurements (mmseg loop, corruption generation, memory)
    scale_images: int = 2  # ADE-like images per mmseg-comparison loop
    corruption_images: int = 8  # images per corruption run (x 16 corruptions): enough to amortise worker start-up
    scale_rounds: int = 3
    quick: bool = False


def quick_settings(**overrides) -> Settings:
    """Small enough for a CPU in about a minute: 256 x 256, 3 rounds, micro pipelines."""
    return Settings(**{"size": 256, "rounds": 3, "images": 2, "pipeline_models": QUICK_PIPELINE_MODELS, "quick": True,
                       "added_metrics_scene": QUICK_ADDED_METRICS_SCENE, **overrides})


def _runner(fn, settings: Settings):
    """``fn`` (a model in eval mode, or a method of one) as the bench runs it: compiled and
    under autocast if asked, the same for ours and the reference."""
    if settings.compile:
        fn = torch.compile(fn)
    if settings.amp is None:
        return fn
    return partial(_autocast_call, fn, torch.device(settings.device).type, AMP_DTYPES[settings.amp])


def _autocast_call(fn, device_type: str, dtype: torch.dtype, *args, **kwargs):
    with torch.autocast(device_type, dtype=dtype):
        return fn(*args, **kwargs)


def matmul_rate(settings: Settings) -> dict:
    """MACs per second of an n x n x n matrix product (median of the rounds)."""
    device = torch.device(settings.device)
    n = settings.matmul_size or (8192 if device.type == "cuda" else 2048)
    dtype = AMP_DTYPES[settings.amp] if settings.amp else torch.float32
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    samples = time_calls(lambda: a @ b, device, settings.warmup, max(settings.rounds, 3))
    return {"n": n, "dtype": str(dtype).removeprefix("torch."), "samples_ms": samples,
            "macs_per_second": n ** 3 / (float(np.median(samples)) / 1e3)}


def interleaved(contestants: dict, settings: Settings) -> dict[str, list[float]]:
    """Per-forward milliseconds of each contestant in each round, rounds in alternating order."""
    device = torch.device(settings.device)
    names = list(contestants)
    samples = {name: [] for name in names}
    with torch.inference_mode():
        for name in names:
            time_calls(contestants[name], device, settings.warmup, 0)
        for r in range(settings.rounds):
            for name in names if r % 2 == 0 else reversed(names):
                samples[name].append(float(np.median(time_calls(contestants[name], device, 0, settings.calls))))
    return samples


def speedup(reference_ms: list[float], ours_ms: list[float]) -> dict:
    ratios = np.array(reference_ms) / np.array(ours_ms)
    return {"median": float(np.median(ratios)), "min": float(ratios.min()), "max": float(ratios.max())}


def executed_macs(model: nn.Module, height: int, width: int) -> int:
    """Multiply-accumulates the forward really performs (fast paths on), on the meta device."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(torch.empty(1, 3, height, width, device="meta"))
    return counter.get_total_flops() // 2


def _meta_model(name: str, num_classes: int, **kw) -> nn.Module:
    with torch.device("meta"):
        return create_model(name, num_classes=num_classes, **kw)


def _cost(ms: float, macs: int, executed: int, rate: float) -> dict:
    per_second = macs / (ms / 1e3)
    return {"ms": ms, "gmacs": macs / 1e9, "executed_gmacs": executed / 1e9,
            "efficiency": per_second / rate, "executed_efficiency": executed / (ms / 1e3) / rate}


def randomize_statistics(model: nn.Module) -> nn.Module:
    """Random biases, norm scales and batch-norm statistics in place (a fresh model has
    zeros and ones there), so that a comparison exercises every term; eval mode."""
    with torch.no_grad():
        for key, tensor in model.state_dict().items():
            if not tensor.is_floating_point():
                continue
            if "running_var" in key:
                tensor.uniform_(0.5, 2.0)
            elif key.endswith("bias") or "running_mean" in key:
                tensor.normal_(0.0, 0.2)
            elif tensor.ndim == 1:
                tensor.uniform_(0.5, 1.5)
    return model.eval()


def randomized_hf_segformer(size: str, num_classes: int):
    """HF's SegFormer with every weight and norm statistic random and logits of order one."""
    import transformers

    torch.manual_seed(0)
    model = randomize_statistics(transformers.SegformerForSemanticSegmentation(
        transformers.SegformerConfig(num_labels=num_classes, **HF_SEGFORMER[size])))
    with torch.no_grad():
        model.decode_head.classifier.weight.mul_(10)
    return model


def bench_segformer(size: str, settings: Settings, rate: float) -> dict:
    """Our SegFormer against HF transformers' with the same weights (HF's LayerNorm eps)."""
    import transformers

    device, side = torch.device(settings.device), settings.size
    hf = randomized_hf_segformer(size, settings.num_classes).to(device)
    ours = segformer_from_hf_config(hf.config.to_dict())
    ours.load_state_dict(convert_hf_state_dict(hf.state_dict()), strict=True)
    ours = ours.eval().to(device)
    x = torch.randn(1, 3, side, side, device=device)
    run_hf, run_ours = _runner(hf, settings), _runner(ours, settings)
    with torch.inference_mode():
        diff = (run_ours(x).float() - run_hf(pixel_values=x).logits.float()).abs().max().item()
    samples = interleaved({"reference": lambda: run_hf(pixel_values=x), "ours": lambda: run_ours(x)}, settings)
    meta = _meta_model(f"segformer_{size}", settings.num_classes)
    macs, executed = count_macs(meta, side, side)[0], executed_macs(meta, side, side)
    ref_ms, our_ms = float(np.median(samples["reference"])), float(np.median(samples["ours"]))
    return {"name": f"SegFormer-{size.upper()} forward", "input": f"1x3x{side}x{side}",
            "reference_name": f"transformers {transformers.__version__}",
            "reference_impl": f"transformers {transformers.__version__} SegformerForSemanticSegmentation "
                              f"(attention: {hf.config._attn_implementation})",
            "ours": _cost(our_ms, macs, executed, rate), "reference": _cost(ref_ms, macs, macs, rate),
            "speedup": speedup(samples["reference"], samples["ours"]), "max_abs_diff": diff, "samples_ms": samples}


def bench_vit_encoder(family: str, settings: Settings, rate: float) -> dict:
    """Our ViT encoder (Segmenter's or SETR's) against timm's VisionTransformer with our
    weights; the full model beside it."""
    import timm

    name, eps, timm_name, final_norm = VIT_ENCODERS[family]
    device, side = torch.device(settings.device), settings.size
    torch.manual_seed(0)
    model = create_model(name, num_classes=settings.num_classes, crop_size=side).eval().to(device)
    reference = timm.create_model(timm_name, pretrained=False, img_size=side, num_classes=0, global_pool="",
                                  norm_layer=partial(nn.LayerNorm, eps=eps), final_norm=final_norm)
    reference.load_state_dict(model.encoder.state_dict(), strict=True)
    reference = reference.eval().to(device)
    x = torch.randn(1, 3, side, side, device=device)
    run_ref, run_enc = _runner(reference.forward_features, settings), _runner(model.encoder, settings)
    run_model = _runner(model, settings)
    with torch.inference_mode():
        theirs, ours = run_ref(x).float(), run_enc(x)
        if not final_norm:  # SETR's encoder returns maps of the patch tokens after the tapped blocks
            theirs, ours = theirs[:, 1:], map_to_tokens(ours[-1])
        diff = (ours.float() - theirs).abs().max().item()
    samples = interleaved({"reference": lambda: run_ref(x), "ours": lambda: run_enc(x),
                           "model": lambda: run_model(x)}, settings)
    meta = _meta_model(name, settings.num_classes, crop_size=side)
    enc_macs, model_macs = count_macs(meta.encoder, side, side)[0], count_macs(meta, side, side)[0]
    ms = {k: float(np.median(v)) for k, v in samples.items()}
    return {"name": f"{ {'segmenter': 'Segmenter', 'setr': 'SETR'}[family]} ViT-B/16 encoder", "input": f"1x3x{side}x{side}",
            "reference_name": f"timm {timm.__version__}",
            "reference_impl": f"timm {timm.__version__} {timm_name} (img_size={side}, our weights)",
            "ours": _cost(ms["ours"], enc_macs, enc_macs, rate), "reference": _cost(ms["reference"], enc_macs,
                                                                                    enc_macs, rate),
            "model": {"name": name, **_cost(ms["model"], model_macs, executed_macs(meta, side, side), rate),
                      "decoder_ms": ms["model"] - ms["ours"]},
            "speedup": speedup(samples["reference"], samples["ours"]), "max_abs_diff": diff, "samples_ms": samples}


class ForwardTimer(nn.Module):
    """Times every call of ``forward`` (synchronised on CUDA): the sum of the forward passes."""

    def __init__(self, model: nn.Module, forward, device: torch.device):
        super().__init__()
        self.model, self.run, self.device, self.info = model, forward, device, model.info
        self.seconds, self.calls = 0.0, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        synchronize(self.device)
        start = time.perf_counter()
        out = self.run(x)
        synchronize(self.device)
        self.seconds += time.perf_counter() - start
        self.calls += 1
        return out


class TimedEvaluator:
    """An evaluator whose ``process`` calls are timed (synchronised on CUDA)."""

    def __init__(self, evaluator, device: torch.device):
        self.evaluator, self.device, self.seconds = evaluator, device, 0.0

    def process(self, sample, pred, scores=None) -> None:
        synchronize(self.device)
        start = time.perf_counter()
        self.evaluator.process(sample, pred, scores)
        synchronize(self.device)
        self.seconds += time.perf_counter() - start

    def synchronize(self) -> None:
        self.evaluator.synchronize()

    def results(self) -> dict:
        return self.evaluator.results()


ADDED_EVALUATORS = ("boundary", "calibration")  # issue 17's: their cost against the rest of the evaluation


def bench_pipeline(name: str, settings: Settings) -> dict:
    """The evaluation loop on the synthetic set, single scale and multi-scale + flip."""
    device = torch.device(settings.device)
    dataset = Synthetic("val", num_images=settings.images)
    torch.manual_seed(0)
    model = create_model(name, num_classes=dataset.num_classes).eval().to(device)
    timer = ForwardTimer(model, _runner(model, settings), device)
    out = {"model": name, "images": settings.images, "image_size": dataset.image_size}
    for protocol_name in ("single_scale", "multi_scale"):
        protocol = paper_protocol(model.info, dataset, multi_scale=protocol_name == "multi_scale")
        evaluate(timer, dataset, protocol, standard_evaluators(dataset, bootstrap=0), device, 1)  # warm-up
        runs = []
        for _ in range(settings.rounds):
            timer.seconds, timer.calls = 0.0, 0
            evaluators = [TimedEvaluator(e, device) for e in standard_evaluators(dataset, bootstrap=0)]
            timing = evaluate(timer, dataset, protocol, evaluators, device, workers=settings.workers)
            added = sum(e.seconds for e in evaluators if e.evaluator.name in ADDED_EVALUATORS)
            runs.append({"total_seconds": timing.total_seconds, "predict_seconds": timing.model_seconds,
                         "forward_seconds": timer.seconds, "forwards": timer.calls,
                         **{f"metric_{e.evaluator.name}": e.seconds for e in evaluators},
                         "added_metrics_fraction": added / (timing.total_seconds - added)})
        median = {k: float(np.median([r[k] for r in runs])) for k in runs[0]}
        overheads = [r["predict_seconds"] / r["forward_seconds"] - 1 for r in runs]
        out[protocol_name] = {
            "protocol": protocol.source, "images_per_second": settings.images / median["total_seconds"],
            "predict_images_per_second": settings.images / median["predict_seconds"],
            "forward_images_per_second": settings.images / median["forward_seconds"],
            "forwards_per_image": median["forwards"] / settings.images,
            "overhead": float(np.median(overheads)), "overhead_min": min(overheads), "overhead_max": max(overheads),
            "metric_seconds_per_image": {k.removeprefix("metric_"): median[k] / settings.images for k in median
                                         if k.startswith("metric_")},
            "added_metrics_fraction": median["added_metrics_fraction"], "runs": runs}
    return out


class SceneDataset(SegDataset):
    """``count`` times one random Cityscapes-classed scene of ``shape``, tested at its own size
    (the Cityscapes test scale for 1024 x 2048); the label is a grid of 64-pixel blocks of
    random classes, so there are boundaries everywhere."""

    kind = "cityscapes"
    classes = CITYSCAPES_CLASSES

    def __init__(self, count: int, shape: tuple[int, int]):
        rng = np.random.default_rng(0)
        height, width = shape
        blocks = rng.integers(0, len(self.classes), (-(-height // 64), -(-width // 64)))
        label = np.kron(blocks, np.ones((64, 64), np.int64))[:height, :width].astype(np.uint8)
        self.sample = Sample(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), label, None, "scene")
        self.test_scale = (width, height)
        super().__init__([None] * count, f"cityscapes-shaped {height}x{width}")

    def __getitem__(self, index: int) -> Sample:
        return self.sample


def bench_added_metrics(settings: Settings) -> dict:
    """Seconds per image of each evaluator in a single-scale evaluation of ``settings.images``
    scenes (median over rounds), and the share boundary + calibration add to the rest."""
    name, shape = settings.added_metrics_scene
    device = torch.device(settings.device)
    dataset = SceneDataset(settings.images, shape)
    torch.manual_seed(0)
    model = create_model(name, num_classes=dataset.num_classes).eval().to(device)
    protocol = paper_protocol(model.info, dataset)
    runs = []
    for _ in range(settings.rounds):
        evaluators = [TimedEvaluator(e, device) for e in standard_evaluators(dataset, bootstrap=0)]
        timing = evaluate(model, dataset, protocol, evaluators, device, workers=settings.workers)
        added = sum(e.seconds for e in evaluators if e.evaluator.name in ADDED_EVALUATORS)
        runs.append({"total_seconds": timing.total_seconds, "added_seconds": added,
                     **{f"metric_{e.evaluator.name}": e.seconds for e in evaluators}})
    median = {k: float(np.median([r[k] for r in runs])) for k in runs[0]}
    return {"model": name, "scene": list(shape), "images": settings.images, "protocol": protocol.source,
            "seconds_per_image": median["total_seconds"] / settings.images,
            "metric_seconds_per_image": {k.removeprefix("metric_"): median[k] / settings.images for k in median
                                         if k.startswith("metric_")},
            "added_metrics_fraction": float(np.median([r["added_seconds"] / (r["total_seconds"] - r["added_seconds"])
                                                       for r in runs])),
            "runs": runs}


def run_bench(settings: Settings, progress=None) -> dict:
    """Every comparison of the module docstring; ``progress(text)`` is called before each."""
    import importlib.util

    from segbench.errors import UsageError

    if importlib.util.find_spec("transformers") is None:  # found before anything is timed
        raise UsageError("segbench bench times segbench against HF transformers, which is not installed: "
                         "pip install 'segbench[test]' (or transformers>=4.40)")
    step = progress or (lambda text: None)
    device = torch.device(settings.device)
    load_before = os.getloadavg()
    step("matrix multiply")
    rate = matmul_rate(settings)
    comparisons = []
    for size in HF_SEGFORMER:
        step(f"SegFormer-{size.upper()} against transformers")
        comparisons.append(bench_segformer(size, settings, rate["macs_per_second"]))
    for family in VIT_ENCODERS:
        step(f"{family} encoder against timm")
        comparisons.append(bench_vit_encoder(family, settings, rate["macs_per_second"]))
    pipelines = []
    for name in settings.pipeline_models:
        step(f"evaluation pipeline: {name}")
        pipelines.append(bench_pipeline(name, settings))
    step(f"added metrics: {settings.added_metrics_scene[0]} on {settings.added_metrics_scene[1]} scenes")
    added_metrics = bench_added_metrics(settings)
    scale = None
    if settings.scale:
        with tempfile.TemporaryDirectory() as folder:
            scale = bench_scale(Path(folder), settings.quick, settings.scale_images, settings.scale_rounds, step,
                                    settings.corruption_images)
    return {"settings": asdict(settings), "torch": torch.__version__, "device_name": device_name(device),
            "threads": torch.get_num_threads(), "load_average": {"before": load_before, "after": os.getloadavg()},
            "matmul": rate, "comparisons": comparisons, "pipelines": pipelines, "added_metrics": added_metrics,
            "scale": scale}
