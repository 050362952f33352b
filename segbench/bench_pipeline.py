"""The whole evaluation loop, segbench against mmsegmentation 1.2.2, for ``segbench bench``.

Both sides run the same architecture with the same weights on the same image files,
each through its own loop, from reading the PNGs to the dataset-level confusion matrix:

- segbench: ``build_dataset`` -> ``evaluate`` (the paper protocol of ``paper_protocol``)
  with the segmentation evaluator alone (no size breakdown, no bootstrap: mmseg has
  neither).
- mmseg: its test pipeline (``LoadImageFromFile``, ``Resize`` to the dataset's test
  scale, ``LoadAnnotations``, ``PackSegInputs``; for multi-scale + flip the configs'
  ``TestTimeAug`` over ratios 0.5-1.75 and flips inside ``SegTTAModel``), then
  ``EncoderDecoder.test_step`` and ``IoUMetric.process`` / ``compute_metrics``: what
  ``tools/test.py`` runs per image, without the runner and the dataloader processes.

Models: SegFormer-B0 whole image on ADE-like images (short side 512, long side 768: a
multiple of 32, so SegFormer's size divisor changes nothing and mmseg 1.x's ratios of the
original size are segbench's ratios of the test scale), and Segmenter-T/16 by sliding
768/512 windows on a Cityscapes-size image (1024 x 2048, the Cityscapes protocol).

mmseg's SegformerHead is not the official head: its per-level 1x1 projections are
ConvModules (conv without bias, BN, ReLU) where NVlabs' MLP head has plain linear layers,
and it concatenates the levels c1..c4 where the official head concatenates c4..c1. The
bench turns the projections' ReLU off, gives their BN the identity statistics with the
linear bias as its shift, and permutes the fusion weights: both sides then compute the
official model, as the agreement figures show.

Timing: one untimed image on each side, then ``rounds`` rounds, each running both loops once in
alternating order; the speed-up is the median over rounds of mmseg's seconds / segbench's, with min and max.
"""
from __future__ import annotations

import importlib.machinery
import io
import logging
import os
import re
import sys
import time
import types
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from segbench.data import synthetic
from segbench.data.datasets import CITYSCAPES_LUT, build_dataset, opencv_single_threaded
from segbench.engine.evaluate import SegmentationEvaluator, evaluate
from segbench.engine.inference import predict
from segbench.engine.protocols import MS_RATIOS, paper_protocol
from segbench.models import create_model

MMSEG_VERSION = "1.2.2"
ADE_SHAPE = (512, 768)  # short side 512 (ADE20K's test scale), long side a multiple of 32
CITYSCAPES_SHAPE = (1024, 2048)


@dataclass
class PipelineSettings:
    ade_images: int = 2  # ADE-like images per SegFormer loop
    cityscapes_images: int = 1  # Cityscapes-size images per Segmenter loop
    rounds: int = 3
    multi_scale: bool = True
    ade_shape: tuple[int, int] = ADE_SHAPE
    cityscapes_shape: tuple[int, int] = CITYSCAPES_SHAPE
    quick: bool = False  # tiny images predicted as they are (no test resize), 64-pixel windows


QUICK_WINDOW = 64


def quick_pipeline_settings() -> PipelineSettings:
    """Tiny sizes: checks the structure (both loops, agreement, ratios) in seconds; the
    protocols lose their test resize, so these numbers say nothing about speed."""
    return PipelineSettings(ade_images=1, cityscapes_images=1, rounds=1, ade_shape=(64, 96),
                            cityscapes_shape=(96, 192), quick=True)


# --------------------------------------------------------------------------- images on disk


def _scene(index: int, shape: tuple[int, int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic ADE-like scene cropped to ``shape``: (image, ADE label ids)."""
    image, label, _ = synthetic.scene(index, "val", seed, max(shape))
    return np.ascontiguousarray(image[:shape[0], :shape[1]]), np.ascontiguousarray(label[:shape[0], :shape[1]])


def write_ade_like(root: Path, count: int, shape: tuple[int, int] = ADE_SHAPE, seed: int = 0) -> Path:
    """``count`` synthetic images in the ADE20K layout (PNG: decoded the same by PIL and cv2)."""
    for sub in ("images", "annotations"):
        (root / sub / "validation").mkdir(parents=True, exist_ok=True)
    for index in range(count):
        image, label = _scene(index, shape, seed)
        Image.fromarray(image).save(root / "images" / "validation" / f"ADE_val_{index + 1:08d}.png")
        Image.fromarray(label).save(root / "annotations" / "validation" / f"ADE_val_{index + 1:08d}.png")
    return root


def write_cityscapes_like(root: Path, count: int, shape: tuple[int, int] = CITYSCAPES_SHAPE, seed: int = 0) -> Path:
    """``count`` synthetic images in the Cityscapes layout, with the labelTrainIds files mmseg reads."""
    images, labels = root / "leftImg8bit" / "val" / "bench", root / "gtFine" / "val" / "bench"
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    evaluated = np.flatnonzero(CITYSCAPES_LUT != 255)  # label ids of the 19 classes
    for index in range(count):
        image, ade = _scene(index, shape, seed)
        label_ids = np.where(ade == 0, 0, evaluated[ade.astype(np.int64) % len(evaluated)]).astype(np.uint8)
        stem = f"bench_{index:06d}_000019"
        Image.fromarray(image).save(images / f"{stem}_leftImg8bit.png")
        Image.fromarray(label_ids).save(labels / f"{stem}_gtFine_labelIds.png")
        Image.fromarray(CITYSCAPES_LUT[label_ids].astype(np.uint8)).save(labels / f"{stem}_gtFine_labelTrainIds.png")
    return root


# --------------------------------------------------------------------------- mmseg


class _StandInExt(types.ModuleType):
    """mmcv-lite has no compiled ops; these models never call them (REFERENCE_FACTS)."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)

        def missing(*args, **kwargs):
            raise NotImplementedError(f"mmcv._ext.{name} (stand-in)")
        return missing


def import_mmseg():
    """mmseg's registries, with a stand-in ``mmcv._ext``; None (and the reason) if unusable."""
    if "mmcv._ext" not in sys.modules:
        ext = _StandInExt("mmcv._ext")
        ext.__spec__ = importlib.machinery.ModuleSpec("mmcv._ext", None)
        sys.modules["mmcv._ext"] = ext
    try:
        import mmseg
        from mmseg.utils import register_all_modules

        register_all_modules(init_default_scope=True)
        from mmengine.logging import MMLogger
    except Exception as exc:  # not installed, or an incompatible version
        return None, f"{type(exc).__name__}: {exc}"
    # IoUMetric logs its per-class table (INFO) and warnings on stdout, which `--json` keeps for one document
    MMLogger.get_current_instance().setLevel(logging.ERROR)
    return mmseg, None


def _build(cfg: dict):
    from mmengine.config import ConfigDict
    from mmseg.registry import MODELS

    module = MODELS.build(ConfigDict(cfg))
    module.eval()
    return module


def _preprocessor(info) -> dict:
    return dict(type="SegDataPreProcessor", mean=list(info.mean), std=list(info.std), bgr_to_rgb=True, pad_val=0,
                seg_pad_val=255)


LOSS = dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0)


def mmseg_segformer(ours) -> torch.nn.Module:
    """mmseg's EncoderDecoder(MixVisionTransformer, SegformerHead) with ``ours``' weights (B0 shape)."""
    enc = ours.encoder
    dims = [getattr(enc, f"norm{s}").weight.numel() for s in range(1, 5)]
    model = _build(dict(
        type="EncoderDecoder", data_preprocessor=_preprocessor(ours.info),
        backbone=dict(type="MixVisionTransformer", in_channels=3, embed_dims=dims[0], num_stages=4,
                      num_layers=[len(getattr(enc, f"block{s}")) for s in range(1, 5)], num_heads=[1, 2, 5, 8],
                      patch_sizes=[7, 3, 3, 3], sr_ratios=[8, 4, 2, 1], out_indices=(0, 1, 2, 3), mlp_ratio=4,
                      qkv_bias=True, drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.0),
        decode_head=dict(type="SegformerHead", in_channels=dims, in_index=[0, 1, 2, 3],
                         channels=ours.decoder.linear_fuse.conv.out_channels, dropout_ratio=0.1,
                         num_classes=ours.info.num_classes, norm_cfg=dict(type="BN"), align_corners=False,
                         loss_decode=LOSS),
        train_cfg=dict(), test_cfg=dict(mode="whole")))
    state, mapped = ours.state_dict(), {}
    for key, value in state.items():
        m = re.fullmatch(r"encoder\.patch_embed(\d)\.(proj|norm)\.(\w+)", key)
        if m:
            mapped[f"backbone.layers.{int(m[1]) - 1}.0.{'projection' if m[2] == 'proj' else 'norm'}.{m[3]}"] = value
            continue
        m = re.fullmatch(r"encoder\.norm(\d)\.(\w+)", key)
        if m:
            mapped[f"backbone.layers.{int(m[1]) - 1}.2.{m[2]}"] = value
            continue
        m = re.fullmatch(r"encoder\.block(\d)\.(\d+)\.(.+)\.(weight|bias)", key)
        if m:
            prefix, name, kind = f"backbone.layers.{int(m[1]) - 1}.1.{m[2]}.", m[3], m[4]
            if name == "attn.q":
                kv = state[key.replace("attn.q.", "attn.kv.")]
                mapped[prefix + f"attn.attn.in_proj_{kind}"] = torch.cat([value, kv])
            elif name in ("norm1", "norm2", "attn.sr", "attn.norm"):
                mapped[prefix + f"{name}.{kind}"] = value
            elif name == "attn.proj":
                mapped[prefix + f"attn.attn.out_proj.{kind}"] = value
            elif name in ("mlp.fc1", "mlp.fc2"):  # Linear -> 1x1 conv
                layer = 0 if name == "mlp.fc1" else 4
                mapped[prefix + f"ffn.layers.{layer}.{kind}"] = value[..., None, None] if kind == "weight" else value
            elif name == "mlp.dwconv.dwconv":
                mapped[prefix + f"ffn.layers.1.{kind}"] = value
            elif name != "attn.kv":
                raise KeyError(key)
    dec, head = ours.decoder, {}
    for level in range(4):  # linear c_{level+1} -> conv (no bias) + identity BN carrying the bias; no ReLU
        linear = getattr(dec, f"linear_c{level + 1}").proj
        bn_eps = model.decode_head.convs[level].bn.eps
        head[f"convs.{level}.conv.weight"] = linear.weight[..., None, None]
        head[f"convs.{level}.bn.weight"] = torch.ones_like(linear.bias)
        head[f"convs.{level}.bn.bias"] = linear.bias
        head[f"convs.{level}.bn.running_mean"] = torch.zeros_like(linear.bias)
        head[f"convs.{level}.bn.running_var"] = torch.full_like(linear.bias, 1 - bn_eps)
        head[f"convs.{level}.bn.num_batches_tracked"] = torch.tensor(0)
        model.decode_head.convs[level].with_activation = False
    fuse = dec.linear_fuse.conv.weight  # official input order c4, c3, c2, c1; mmseg's c1..c4
    head["fusion_conv.conv.weight"] = torch.cat(list(fuse.chunk(4, dim=1))[::-1], dim=1)
    for stat in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
        head[f"fusion_conv.bn.{stat}"] = getattr(dec.linear_fuse.bn, stat)
    head["conv_seg.weight"], head["conv_seg.bias"] = dec.linear_pred.weight, dec.linear_pred.bias
    mapped.update({f"decode_head.{k}": v for k, v in head.items()})
    model.load_state_dict(mapped, strict=True)
    return model


VIT_RENAMES = [  # ours (timm block names) -> mmseg 1.x VisionTransformer
    (r"patch_embed\.proj\.", "patch_embed.projection."), (r"norm\.", "ln1."),
    (r"blocks\.(\d+)\.norm1\.", r"layers.\1.ln1."), (r"blocks\.(\d+)\.norm2\.", r"layers.\1.ln2."),
    (r"blocks\.(\d+)\.attn\.qkv\.weight", r"layers.\1.attn.attn.in_proj_weight"),
    (r"blocks\.(\d+)\.attn\.qkv\.bias", r"layers.\1.attn.attn.in_proj_bias"),
    (r"blocks\.(\d+)\.attn\.proj\.", r"layers.\1.attn.attn.out_proj."),
    (r"blocks\.(\d+)\.mlp\.fc1\.", r"layers.\1.ffn.layers.0.0."),
    (r"blocks\.(\d+)\.mlp\.fc2\.", r"layers.\1.ffn.layers.1."),
]
MASK_HEAD_RENAMES = [(r"proj_dec\.", "dec_proj."), (r"proj_patch", "patch_proj.weight"),
                     (r"proj_classes", "classes_proj.weight")]


def _renamed(state: dict, renames, prefix: str) -> dict:
    out = {}
    for key, value in state.items():
        for pattern, repl in renames:
            if re.match(pattern, key):
                key = re.sub(pattern, repl, key, count=1)
                break
        out[prefix + key] = value
    return out


def mmseg_segmenter(ours, window: int, stride: int) -> torch.nn.Module:
    """mmseg's EncoderDecoder(VisionTransformer, SegmenterMaskTransformerHead), slide test,
    with ``ours``' weights (LayerNorm eps 1e-5, the official code's)."""
    enc, info = ours.encoder, ours.info
    dim, depth = enc.patch_embed.proj.out_channels, len(enc.blocks)
    heads = enc.blocks[0].attn.num_heads
    model = _build(dict(
        type="EncoderDecoder", data_preprocessor=_preprocessor(info),
        backbone=dict(type="VisionTransformer", img_size=(info.crop_size, info.crop_size), patch_size=info.patch_size,
                      in_channels=3, embed_dims=dim, num_layers=depth, num_heads=heads, mlp_ratio=4, qkv_bias=True,
                      drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.0, act_cfg=dict(type="GELU"),
                      interpolate_mode="bilinear", patch_bias=True, out_indices=(depth - 1,), with_cls_token=True,
                      final_norm=True, norm_cfg=dict(type="LN", eps=1e-5)),
        decode_head=dict(type="SegmenterMaskTransformerHead", in_channels=dim, channels=dim,
                         num_classes=info.num_classes, num_layers=len(ours.decoder.blocks), num_heads=heads,
                         embed_dims=dim, dropout_ratio=0.0, loss_decode=LOSS),
        train_cfg=dict(), test_cfg=dict(mode="slide", crop_size=(window, window), stride=(stride, stride))))
    state = _renamed(enc.state_dict(), VIT_RENAMES, "backbone.")
    head = _renamed(ours.decoder.state_dict(), VIT_RENAMES[2:] + MASK_HEAD_RENAMES, "decode_head.")
    for key in ("decode_head.patch_proj.weight", "decode_head.classes_proj.weight"):  # x @ P == Linear(P^T)
        head[key] = head[key].T
    model.load_state_dict({**state, **head}, strict=True)
    return model


def mmseg_pipeline(test_scale: tuple[int, int], reduce_zero_label: bool, multi_scale: bool):
    from mmcv.transforms import Compose

    load = dict(type="LoadAnnotations", reduce_zero_label=reduce_zero_label)
    if not multi_scale:
        resize = [dict(type="Resize", scale=test_scale, keep_ratio=True)] if test_scale else []
        return Compose([dict(type="LoadImageFromFile"), *resize, load, dict(type="PackSegInputs")])
    return Compose([dict(type="LoadImageFromFile"), dict(type="TestTimeAug", transforms=[
        [dict(type="Resize", scale_factor=r, keep_ratio=True) for r in MS_RATIOS],
        [dict(type="RandomFlip", prob=0.0, direction="horizontal"),
         dict(type="RandomFlip", prob=1.0, direction="horizontal")],
        [load], [dict(type="PackSegInputs")]])])


def mmseg_loop(model, files: list[tuple[str, str]], pipeline, classes, reduce_zero_label: bool,
               multi_scale: bool) -> tuple[float, dict, list[np.ndarray]]:
    """mmseg's evaluation of ``files`` (image, label): seconds, its mIoU, predictions."""
    from mmengine.dataset import pseudo_collate
    from mmseg.evaluation import IoUMetric

    runner = _tta(model) if multi_scale else model
    metric = IoUMetric(iou_metrics=["mIoU"])
    metric.dataset_meta = {"classes": tuple(classes)}
    predictions = []
    start = time.perf_counter()
    with torch.no_grad():
        for image, label in files:
            inputs = dict(img_path=image, seg_map_path=label, reduce_zero_label=reduce_zero_label, seg_fields=[])
            batch = pseudo_collate([pipeline(inputs)])
            outputs = runner.test_step(batch)
            metric.process(batch, [o.to_dict() for o in outputs])
            predictions.append(outputs[0].pred_sem_seg.data[0].numpy())
    scores = metric.compute_metrics(metric.results)
    return time.perf_counter() - start, scores, predictions


def _tta(model):
    from mmseg.models.segmentors import SegTTAModel

    return SegTTAModel(module=model).eval()


# --------------------------------------------------------------------------- the comparison


class _Keep(SegmentationEvaluator):
    """The segmentation evaluator, keeping each prediction (for the agreement figures)."""

    def __init__(self, dataset):
        super().__init__(dataset.num_classes, dataset.classes)
        self.predictions = []

    def process(self, sample, pred, scores=None) -> None:
        super().process(sample, pred, scores)
        self.predictions.append(pred.numpy())


def _agreement(ours: list[np.ndarray], theirs: list[np.ndarray]) -> float:
    same = sum(int((a == b).sum()) for a, b in zip(ours, theirs))
    return same / sum(a.size for a in ours)


def _probability_difference(model, mm_model, dataset, protocol, pipeline, reduce_zero_label: bool) -> float:
    """Max |softmax difference| over the first image's pixels and classes, single scale."""
    from mmengine.dataset import pseudo_collate

    sample = dataset[0]
    ours = predict(model, sample.image, protocol, dataset.num_classes).softmax(0)
    image, label = dataset.files[0][0], _mmseg_label(dataset, 0)
    with torch.no_grad():
        out = mm_model.test_step(pseudo_collate([pipeline(dict(img_path=str(image), seg_map_path=label,
                                                               reduce_zero_label=reduce_zero_label, seg_fields=[]))]))
    return float((ours - out[0].seg_logits.data.softmax(0)).abs().max())


def _mmseg_label(dataset, index: int) -> str:
    label = str(dataset.files[index][1])
    return label.replace("_labelIds.png", "_labelTrainIds.png") if dataset.kind == "cityscapes" else label


def compare(name: str, model, mm_model, dataset, settings: PipelineSettings) -> dict:
    """Both loops over ``dataset``, single scale and (if asked) multi-scale + flip."""
    reduce_zero_label = dataset.kind == "ade20k"
    files = [(str(dataset.files[i][0]), _mmseg_label(dataset, i)) for i in range(len(dataset))]
    out = {"model": name, "dataset": dataset.kind, "images": len(dataset),
           "image_size": list(dataset[0].image.shape[:2]), "mmseg": MMSEG_VERSION}
    for protocol_name in ("single_scale", "multi_scale") if settings.multi_scale else ("single_scale",):
        multi = protocol_name == "multi_scale"
        protocol = paper_protocol(model.info, dataset, multi_scale=multi)
        if settings.quick:
            slide = {"window": QUICK_WINDOW, "stride": QUICK_WINDOW * 2 // 3, "min_short_side": None}
            protocol = replace(protocol, test_scale=None, **(slide if protocol.mode == "slide" else {}))
        pipeline = mmseg_pipeline(protocol.test_scale, reduce_zero_label, multi)
        # Untimed, one image each: first calls allocate and pick kernels (detectron2 excludes
        # warm-up too); otherwise round 0 charges it to whichever side runs first.
        evaluate(model, dataset, protocol, [_Keep(dataset)], max_images=1)
        mmseg_loop(mm_model, files[:1], pipeline, dataset.classes, reduce_zero_label, multi)
        ours_s, theirs_s = [], []
        for r in range(settings.rounds):
            order = ("ours", "mmseg") if r % 2 == 0 else ("mmseg", "ours")
            for side in order:
                if side == "ours":
                    keep = _Keep(dataset)
                    ours_s.append(evaluate(model, dataset, protocol, [keep]).total_seconds)
                else:
                    seconds, scores, theirs = mmseg_loop(mm_model, files, pipeline, dataset.classes,
                                                         reduce_zero_label, multi)
                    theirs_s.append(seconds)
        ratios = np.array(theirs_s) / np.array(ours_s)
        ours_miou = keep.results()["mIoU"]
        entry = {"protocol": protocol.source,
                 "ours_images_per_second": len(dataset) / float(np.median(ours_s)),
                 "mmseg_images_per_second": len(dataset) / float(np.median(theirs_s)),
                 "speedup": {"median": float(np.median(ratios)), "min": float(ratios.min()),
                             "max": float(ratios.max())},
                 "ours_seconds": ours_s, "mmseg_seconds": theirs_s,
                 "pixel_agreement": _agreement(keep.predictions, theirs),
                 "ours_mIoU": ours_miou, "mmseg_mIoU": float(scores["mIoU"])}
        if not multi:
            entry["max_probability_difference"] = _probability_difference(model, mm_model, dataset, protocol,
                                                                          pipeline, reduce_zero_label)
        out[protocol_name] = entry
    return out


def bench_against_mmseg(folder: Path, settings: PipelineSettings, progress=None) -> dict:
    """SegFormer-B0 (ADE-like, whole image) and Segmenter-T/16 (Cityscapes-size, slide) against mmseg."""
    step = progress or (lambda text: None)
    mmseg, reason = import_mmseg()
    if mmseg is None:
        return {"skipped": f"mmsegmentation not importable ({reason}); pip install mmcv-lite==2.1.0 "
                           f"mmengine==0.10.7 mmsegmentation=={MMSEG_VERSION} ftfy regex"}
    results = []
    step("pipeline against mmseg: SegFormer-B0 (ADE-like, whole image)")
    ade = build_dataset("ade20k", "val", write_ade_like(folder / "ade", settings.ade_images, settings.ade_shape))
    torch.manual_seed(0)
    from segbench.bench import randomize_statistics  # random norm statistics: every term exercised

    ours = randomize_statistics(create_model("segformer_b0", num_classes=ade.num_classes))
    results.append(compare("segformer_b0", ours, mmseg_segformer(ours), ade, settings))
    step("pipeline against mmseg: Segmenter-T/16 (Cityscapes-size, slide)")
    city = build_dataset("cityscapes", "val", write_cityscapes_like(folder / "cityscapes", settings.cityscapes_images,
                                                                     settings.cityscapes_shape))
    window = QUICK_WINDOW if settings.quick else 768  # Segmenter's Cityscapes crop
    ours = create_model("segmenter_t16_mask", num_classes=city.num_classes, crop_size=window).eval()
    protocol = paper_protocol(ours.info, city)
    stride = QUICK_WINDOW * 2 // 3 if settings.quick else protocol.stride
    results.append(compare("segmenter_t16_mask", ours, mmseg_segmenter(ours, window, stride), city, settings))
    return {"mmseg": mmseg.__version__, "comparisons": results}


# --------------------------------------------------------------------------- corruption generation


CORRUPTION_BENCH_SEVERITY = 3  # one severity of every corruption: the grid's mix of costs


def _plain_corruption_loop(jobs: list[tuple[np.ndarray, str, int]]) -> float:
    """imagecorruptions.corrupt on (decoded image, corruption, severity), results discarded:
    the library's own cost."""
    from imagecorruptions import corrupt

    start = time.perf_counter()
    for image, corruption, severity in jobs:
        corrupt(image, severity=severity, corruption_name=corruption)
    return time.perf_counter() - start


def _plain_corruption_loop_in_two(shares: list[list[tuple[np.ndarray, str, int]]]) -> float | None:
    """The plain loop on each share of the jobs in its own forked process, and nothing else:
    how far this machine's two cores let any two workers go (two vCPUs that are one core's
    hyperthreads, or a busy host, give well under 2x). None where processes cannot be forked."""
    import multiprocessing

    if "fork" not in multiprocessing.get_all_start_methods():
        return None
    context = multiprocessing.get_context("fork")  # the jobs' images are inherited, not pickled
    start = time.perf_counter()
    processes = [context.Process(target=_plain_corruption_loop, args=(share,)) for share in shares]
    for process in processes:
        process.start()
    for process in processes:
        process.join()
    if any(process.exitcode != 0 for process in processes):
        raise RuntimeError(f"a plain corruption process failed (exit codes {[p.exitcode for p in processes]})")
    return time.perf_counter() - start


def _pillow_png(level: int):
    def encode(image: np.ndarray) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG", compress_level=level)
        return buffer.getvalue()
    return encode


def _opencv_png(image: np.ndarray) -> bytes:
    # libpng's fastest setting measured (segbench's encoder before fpng): Sub filter, Huffman-only zlib level 1
    import cv2

    params = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY,
              cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_SUB]
    return cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), params)[1].tobytes()


def png_encoding(images: list[np.ndarray]) -> dict:
    """Seconds and bytes per image of the manifest's encoder (``png_encoder``), of OpenCV's
    libpng at its fastest setting and of Pillow at zlib levels 1 and 6, on corrupted images,
    interleaved per image; each checked lossless."""
    from segbench.robustness.corruptions import encode_png

    encoders = {"segbench": encode_png, "opencv sub huffman-only": _opencv_png, "pillow level 1": _pillow_png(1),
                "pillow level 6": _pillow_png(6)}
    seconds, size = dict.fromkeys(encoders, 0.0), dict.fromkeys(encoders, 0)
    for image in images:
        for name, encode in encoders.items():
            start = time.perf_counter()
            data = encode(image)
            seconds[name] += time.perf_counter() - start
            size[name] += len(data)
            with Image.open(io.BytesIO(data)) as decoded:
                if not np.array_equal(np.asarray(decoded.convert("RGB")), image):
                    raise RuntimeError(f"{name} PNG encoder is not lossless here")
    return {name: {"seconds_per_image": seconds[name] / len(images), "bytes_per_image": size[name] / len(images)}
            for name in encoders}


def bench_corruption(folder: Path, images: int = 2, shape: tuple[int, int] = (512, 1024), rounds: int = 3,
                     corruptions=None) -> dict:
    """``segbench corrupt`` (1 and 2 workers) against the plain loop on the same decoded
    images, and the plain loop split over 2 processes (the machine's own 2-core scaling), in
    interleaved rounds; each run writes a fresh folder."""
    from segbench.robustness.corruptions import CORRUPTIONS, PNG_ENCODER, corrupt_image, generate

    names = tuple(corruptions or CORRUPTIONS)
    root = write_ade_like(folder / "source", images, shape)
    dataset = build_dataset("synthetic", "val", str(root))
    decoded = [dataset[i].image for i in range(len(dataset))]
    grid = {name: (CORRUPTION_BENCH_SEVERITY,) for name in names}
    jobs = [(image, name, CORRUPTION_BENCH_SEVERITY) for image in decoded for name in names]
    # a checkerboard over (image, corruption): each process gets every corruption about as often
    shares = [[job for i, job in enumerate(jobs) if (i // len(names) + i % len(names)) % 2 == k] for k in (0, 1)]
    opencv_single_threaded()  # as generate's workers run: every contestant on one thread each
    _plain_corruption_loop(jobs[:len(names)])  # untimed: first calls load files and compile (numba)
    sides = ("plain", "plain_2_processes", "workers_1", "workers_2")
    seconds, cpu = {side: [] for side in sides}, {side: [] for side in sides}  # cpu: this process and its children
    for r in range(rounds):
        for side in sides if r % 2 == 0 else reversed(sides):
            before = _children_cpu() + time.process_time()
            if side == "plain":
                seconds[side].append(_plain_corruption_loop(jobs))
            elif side == "plain_2_processes":
                seconds[side].append(_plain_corruption_loop_in_two(shares))
            else:
                workers = int(side[-1])
                out = folder / f"out-{r}-{workers}"
                seconds[side].append(generate("synthetic", "val", str(root), out, grid, workers=workers)["seconds"])
            cpu[side].append(_children_cpu() + time.process_time() - before)
    if None in seconds["plain_2_processes"]:
        del seconds["plain_2_processes"], cpu["plain_2_processes"]
    median = {k: float(np.median(v)) for k, v in seconds.items()}
    median_cpu = {k: float(np.median(v)) for k, v in cpu.items()}
    outputs = len(jobs)
    samples = [corrupt_image(decoded[0], "png", name, CORRUPTION_BENCH_SEVERITY) for name in names]
    return {"images": images, "image_size": list(shape), "corruptions": list(names),
            "severity": CORRUPTION_BENCH_SEVERITY, "outputs": outputs, "rounds": rounds,
            "images_per_second": {k: outputs / v for k, v in median.items()},
            "overhead": median["workers_1"] / median["plain"] - 1,
            "overhead_per_round": [a / b - 1 for a, b in zip(seconds["workers_1"], seconds["plain"])],
            "two_workers_speedup": median["workers_1"] / median["workers_2"],
            "plain_two_processes_speedup": (median["plain"] / median["plain_2_processes"]
                                            if "plain_2_processes" in median else None),
            # of what the machine allows two processes: the 2-core target where its cores scale < 2x
            "two_workers_share_of_plain_two": (median["plain_2_processes"] / median["workers_2"]
                                               if "plain_2_processes" in median else None),
            # On a machine other jobs share, wall time shows their load as much as ours; CPU time
            # counts only what segbench spent: its overhead, and what 2 workers cost beyond 1.
            "cpu_overhead": median_cpu["workers_1"] / median_cpu["plain"] - 1,
            "two_workers_extra_cpu": median_cpu["workers_2"] / median_cpu["workers_1"] - 1,
            "seconds": seconds, "cpu_seconds": cpu, "png_encoder": PNG_ENCODER,
            "png_encoding": png_encoding(samples), "cpu_count": os.cpu_count(), "load_average": os.getloadavg()}


def _children_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# --------------------------------------------------------------------------- memory


def peak_rss_bytes() -> int:
    """This process's peak resident set size. Linux: VmHWM, which starts afresh at exec;
    ru_maxrss does not (a child forked from a large parent reports the parent's peak)."""
    import resource

    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def memory_child(count: int, image_size: int, folder: str) -> None:
    """One evaluation (micro model, synthetic set in memory; size breakdown, bootstrap and
    per-image counts on), its per-image file and record written; prints peak RSS as JSON."""
    import json

    from segbench.data.datasets import Synthetic
    from segbench.engine.evaluate import collect_results, standard_evaluators
    from segbench.metrics.stats import save_per_image
    from segbench.results import write_json_atomic

    torch.manual_seed(0)
    dataset = Synthetic("val", num_images=count, image_size=image_size)
    model = create_model("segformer_micro", num_classes=dataset.num_classes).eval()
    evaluators = standard_evaluators(dataset, size_breakdown=True, bootstrap=1000)
    evaluate(model, dataset, paper_protocol(model.info, dataset), evaluators)
    per_image = Path(folder) / f"{count}.per_image.npz"
    save_per_image(per_image, evaluators[0].per_image, dataset.classes)
    record = Path(folder) / f"{count}.json"
    write_json_atomic(record, {"metrics": collect_results(evaluators)})
    print(json.dumps({"images": count, "peak_rss_bytes": peak_rss_bytes(),
                      "per_image_file_bytes": per_image.stat().st_size, "record_bytes": record.stat().st_size}))


def bench_memory(folder: Path, counts: tuple[int, int] = (100, 2000), image_size: int = 64) -> dict:
    """Peak RSS of the same evaluation at two image counts, each in a fresh process."""
    import json
    import subprocess

    runs = []
    for count in counts:
        code = f"from segbench.bench_pipeline import memory_child; memory_child({count}, {image_size}, {str(folder)!r})"
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    small, large = runs
    extra = large["images"] - small["images"]
    return {"image_size": image_size, "runs": runs, "ratio": large["peak_rss_bytes"] / small["peak_rss_bytes"],
            "rss_bytes_per_image": (large["peak_rss_bytes"] - small["peak_rss_bytes"]) / extra,
            "per_image_file_bytes_per_image": large["per_image_file_bytes"] / large["images"],
            "record_bytes_per_image": (large["record_bytes"] - small["record_bytes"]) / extra}


# --------------------------------------------------------------------------- all three, for `segbench bench`


def bench_scale(folder: Path, quick: bool = False, images: int = 2, rounds: int = 3, progress=None,
                corruption_images: int = 8) -> dict:
    """The pipeline against mmseg, corruption generation and memory, as ``segbench bench``
    prints them. ``images``: ADE-like images per loop (the Cityscapes-size one is 1);
    ``corruption_images``: images per corruption run. ``quick``: tiny sizes, for checking the
    structure only."""
    step = progress or (lambda text: None)
    pipeline = quick_pipeline_settings() if quick else PipelineSettings(ade_images=images, rounds=rounds)
    out = {"mmseg_pipeline": bench_against_mmseg(folder / "mmseg", pipeline, step)}
    step("corruption generation against imagecorruptions")
    out["corruption"] = bench_corruption(folder / "corrupt", 1 if quick else corruption_images, (48, 96) if quick else (512, 1024),
                                         1 if quick else rounds, ("contrast", "gaussian_noise") if quick else None)
    step("peak memory against the image count")
    out["memory"] = bench_memory(folder / "memory", (10, 40) if quick else (100, 2000), 32 if quick else 64)
    return out
