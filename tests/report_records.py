"""Records for the report and check tests, in the fields the runner writes (eval, train,
corruption) and the profile schema of HELPERS.md (wave 2), which the profiler will write."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from segbench.results import new_record, write_json_atomic

ENV = {"python": "3.11.7", "platform": "Linux-x86_64", "host": "ci", "torch": "2.15.0", "timm": "1.0.31",
       "numpy": "2.4.6", "threads": 2, "device": "cpu", "device_name": "x86_64", "git_sha": "abc"}
TRICKY_CLASSES = ("sky", "person_rider", "#", "100%", "car & truck", "{brace}")


def eval_record(job_id: str, model: str, arch: str, miou: float, dataset: str = "synthetic", protocol="single_scale",
                classes=TRICKY_CLASSES, images_per_second: float = 90.0, **extra) -> dict:
    ious = {c: miou + (i - len(classes) / 2) for i, c in enumerate(classes)}
    metrics = {"mIoU": miou, "mAcc": miou + 5, "aAcc": miou + 20, "fwIoU": miou + 10, "mDice": miou + 3,
               "IoU": ious, "Acc": {c: v + 5 for c, v in ious.items()}, "absent_classes": [],
               "per_image": {"images": 100, "images_scored": 100, "mIoU_mean": miou - 3, "mIoU_worst10": miou - 20},
               "mIoU_ci": {"low": miou - 1.5, "high": miou + 1.4, "std": 0.7, "confidence": 0.95,
                           "resamples": 1000, "seed": 0},
               "size": {"small": {"min_area": 0, "max_area": 1024, "mIoU": miou - 10, "pixels": 900, "segments": 40,
                                  "classes_present": 5},
                        "medium": {"min_area": 1024, "max_area": 9216, "mIoU": miou - 2, "pixels": 9000,
                                   "segments": 20, "classes_present": 5},
                        "large": {"min_area": 9216, "max_area": None, "mIoU": miou + 4, "pixels": 90000,
                                  "segments": 5, "classes_present": 3}}}
    config = {"arch": arch, "num_classes": len(classes), "dataset": {"kind": dataset, "root": None, "options": {}},
              "eval": {"dataset": dataset, "split": "val", "protocol": protocol}}
    return new_record(job_id, "fake", "eval", model=model, arch=arch, config=config, dataset=dataset, split="val",
                      protocol_name=protocol, protocol={"mode": "whole"}, metrics=metrics,
                      timings={"images": 100, "total_seconds": 2.0, "model_seconds": 1.0,
                               "images_per_second": images_per_second},
                      status="ok", finished="2026-01-01T00:00:01+00:00", env=ENV, **extra)


def profile_record(job_id: str, model: str, arch: str, size=(128, 128), latency: float = 10.0, spread: float = 0.5,
                   macs: float = 2.5e9, params: int = 3_800_000, device: str = "cpu") -> dict:
    """A `profile` record exactly in the schema of HELPERS.md (wave 2 notes)."""
    samples = [latency - spread, latency, latency + spread]
    return new_record(
        job_id, "fake", "profile", model=model, arch=arch, status="ok", env=ENV,
        config={"arch": arch, "input": {"height": size[0], "width": size[1]}}, finished="2026-01-01T00:00:02+00:00",
        input={"height": size[0], "width": size[1], "batch_size": 1, "dtype": "float32", "channels_last": False},
        metrics={"params": params, "params_encoder": params - 400_000, "params_decoder": 400_000, "params_aux": 0,
                 "macs": macs, "macs_fvcore": macs * 0.97, "latency_ms": latency,
                 "latency_ms_p10": latency - spread, "latency_ms_p90": latency + spread,
                 "images_per_second": 1000 / latency, "pipeline_images_per_second": 800 / latency,
                 "peak_memory_mb": 512.0},
        profile={"counters": {"macs": "torch.utils.flop_counter.FlopCounterMode / 2", "macs_fvcore": "fvcore"},
                 "fvcore_skipped_ops": {"aten::softmax": 2},
                 "by_module": [{"name": "encoder", "macs": macs * 0.9, "params": params - 400_000},
                               {"name": "decoder", "macs": macs * 0.1, "params": 400_000}],
                 "latency": {"device": device, "threads": 2, "warmup": 5, "runs": 3, "samples_ms": samples,
                             "batch_size": 1},
                 "memory": {"kind": "process_peak_rss"}})


def train_record(job_id: str, model: str, arch: str) -> dict:
    return new_record(job_id, "fake", "train", model=model, arch=arch, config={"arch": arch}, status="ok",
                      dataset="synthetic", split="train", recipe={"name": "scratch", "iters": 800, "batch_size": 8},
                      metrics={"final_loss": 0.9, "first_loss": 2.2}, timings={"seconds": 60.0},
                      finished="2026-01-01T00:00:00+00:00", env=ENV)


def error_record(job_id: str, model: str, kind: str = "eval") -> dict:
    return new_record(job_id, "fake", kind, model=model, arch="segmenter_micro_p8_linear", config={}, status="error",
                      error={"type": "RuntimeError", "message": "out of memory", "traceback": "..."},
                      finished="2026-01-01T00:00:03+00:00", env=ENV)


def write(folder: Path, records: list[dict]) -> Path:
    for r in records:
        write_json_atomic(folder / f"{r['job_id']}.json", r)
    return folder


def with_previews(folder: Path, record: dict, count: int = 2) -> dict:
    """Give an eval record ``count`` previews (palette PNGs, as the runner writes them)."""
    from segbench.report.previews import write_label_preview
    from segbench.robustness.sweep import write_preview

    palette = np.array([[0, 0, 128], [0, 128, 0], [128, 0, 0], [128, 128, 0], [0, 128, 128], [128, 0, 128]], np.uint8)
    record["previews"] = []
    for i in range(count):
        entry = {"name": f"img{i}", "image": f"previews/shared/img{i}.image.png",
                 "label": f"previews/shared/img{i}.label.png", "prediction": f"previews/{record['job_id']}/img{i}.png"}
        write_preview(folder / entry["image"], np.full((32, 48, 3), 40 * i, np.uint8))
        label = np.zeros((32, 48), np.uint8)
        label[8:20, 10:30] = 2
        write_label_preview(folder / entry["label"], label, palette)
        write_label_preview(folder / entry["prediction"], np.roll(label, i + 1, axis=1), palette)
        record["previews"].append(entry)
    return record


def paper_records() -> list[dict]:
    """Models the papers' tables report, on their datasets, with profiles at the papers' input sizes."""
    ade = ("wall", "building", "sky")
    return [
        eval_record("e-seg-ss", "seg_b16", "segmenter_b16_linear", 47.5, "ade20k", classes=ade),
        eval_record("e-seg-ms", "seg_b16", "segmenter_b16_linear", 49.0, "ade20k", "multi_scale", classes=ade),
        profile_record("p-seg", "seg_b16", "segmenter_b16_linear", (512, 512), latency=12.0, macs=1.0e11,
                       params=102_000_000, device="cuda:0 (NVIDIA H100)"),
        eval_record("e-sf-ss", "sf_b0", "segformer_b0", 37.0, "ade20k", classes=ade),
        profile_record("p-sf", "sf_b0", "segformer_b0", (512, 512), latency=5.0, macs=8.1e9, params=3_750_000),
        eval_record("e-setr", "setr", "setr_l16_pup", 79.0, "cityscapes", classes=("road", "sidewalk")),
        eval_record("e-setr-ade", "setr_ade", "setr_l16_mla", 48.0, "ade20k", classes=ade),
    ]


def read(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def tiny_png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(path)
    return path


def corruption_record(job_id: str, model: str, corruption: str, severity: int, miou: float, grid: dict,
                      key: str = "sweep1", reference: str | None = None, **metrics) -> dict:
    """One cell of a corruption sweep (``metrics`` beside its mIoU: boundary, calibration)."""
    return new_record(job_id, "fake", "corruption", model=model, arch="segformer_b0", status="ok", env=ENV,
                      config={"dataset": {"kind": "cityscapes", "root": None, "options": {}},
                              "eval": {"dataset": "cityscapes", "split": "val", "protocol": "single_scale"}},
                      sweep={"key": key, "grid": grid, "reference": reference}, corruption=corruption,
                      severity=severity, metrics={"mIoU": miou, **metrics}, timings={"images": 2},
                      preview="none.png", finished="2026-01-01T00:00:04+00:00")
