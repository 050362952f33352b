"""The shipped real-data suites end to end, as a user runs them: a tiny dataset in the
official on-disk layout under SEGBENCH_DATA, a random-weight checkpoint in each model's
official release format at the path the suite names under SEGBENCH_WEIGHTS, then
``segbench run`` on the suite. Every job must succeed, with each paper's test protocol
and the checksum of the file written.

The CI test runs the shipped file with only its small models (and one image, one
corruption cell, one timed forward); the slow test runs every model, one at a time."""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from checkpoint_writers import mmseg_cnn_state_dict, mmseg_state_dict, write_mmseg, write_official_segmenter
from layouts import write_ade, write_cityscapes, write_pascal_context
from segbench import cli
from segbench.data.datasets import DATASETS
from segbench.engine.protocols import MS_RATIOS
from segbench.models import create_model
from segbench.suite import load_suite

SUITES = Path(__file__).resolve().parents[1] / "suites"
# The small models of each shipped suite, and those of them also evaluated multi-scale in CI
# (6 scales x flip at the papers' test sizes: Segmenter's windows or 1024x2048 take minutes on a core;
# the Cityscapes-C sweep covers none of the small models: it runs in the slow test).
# Pascal Context has no small released model: CI runs its smallest, FCN R101, single-scale only.
CI_MODELS = {"ade20k_all": ("seg_t16_mask", "segformer_b0"), "cityscapes_all": ("segformer_b0",),
             "pascal_context_all": ("fcn_r101",)}
CI_MULTI_SCALE = {"ade20k_all": ("segformer_b0",), "cityscapes_all": (), "pascal_context_all": ()}
ALL_MODELS = [(name, model) for name in CI_MODELS
              for model in yaml.safe_load((SUITES / f"{name}.yaml").read_text())["models"]]


def write_data(root: Path) -> None:
    """One small validation image of each dataset, in its official layout."""
    rng = np.random.default_rng(0)
    write_ade(root / "ADEChallengeData2016", [rng.integers(0, 151, (48, 64))])
    label_ids = rng.integers(0, 34, (32, 64))
    instance_ids = np.where(label_ids == 26, 26000, label_ids).astype(np.uint16)  # one car instance
    write_cityscapes(root / "cityscapes", [label_ids], instance_ids=[instance_ids])
    write_pascal_context(root, [rng.integers(0, 60, (36, 48))])  # VOCdevkit/VOC2010 under the data root


def derive_suite(name: str, models: tuple[str, ...], multi_scale: tuple[str, ...], out: Path, quick: bool) -> Path:
    """The shipped suite restricted to ``models`` (``multi_scale`` of them in multi-scale
    evaluations), its entries otherwise as they are, results and report under ``out``;
    ``quick``: one image, one corruption cell and one timed forward."""
    data = yaml.safe_load((SUITES / f"{name}.yaml").read_text())
    data["models"] = {key: spec for key, spec in data["models"].items() if key in models}
    for block in ("evaluate", "corruption", "profile"):
        kept = []
        for entry in data.get(block, []):
            if "models" in entry or entry.get("protocol") == "multi_scale":
                keep = multi_scale if entry.get("protocol") == "multi_scale" else models
                entry["models"] = [m for m in entry.get("models", models) if m in keep]
                if not entry["models"]:
                    continue
            if entry.get("reference") and entry["reference"] not in models:
                del entry["reference"]
            if quick and block != "profile":
                entry["max_images"] = 1
            if quick and block == "corruption":
                entry.update(corruptions=["gaussian_noise"], severities=[1])
            if quick and block == "profile":
                entry.update(warmup=0, runs=1)
            kept.append(entry)
        data[block] = kept
    data.update(results=str(out / "results"), report=str(out / "report"))
    path = out / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def write_checkpoint(arch: str, path: Path, kind: str) -> str:
    """A random ``arch`` in its official release format at ``path``; returns the format name
    segbench should detect."""
    classes = DATASETS[kind].classes
    model = create_model(arch, num_classes=len(classes)).eval()
    if model.info.family == "segmenter":
        assert path.name == "checkpoint.pth", path  # the official release: a folder with variant.yml
        write_official_segmenter(path.parent, model)
        return "segmenter-official"
    if model.info.family in ("setr", "segformer"):
        write_mmseg(path, mmseg_state_dict(model), classes)
    else:  # mmseg model-zoo CNN: mmseg's ResNetV1c / MobileNetV2 names, auxiliary head included
        write_mmseg(path, mmseg_cnn_state_dict(arch, len(classes)), classes)
    return "mmseg"


def paper_protocol(kind: str, family: str, crop: int) -> dict:
    """The single-scale protocol each paper's official evaluation runs (window / stride of
    its sliding window, or the whole image), and its test scale (README: Test protocols)."""
    slide = {("ade20k", "segmenter"): (crop, crop - 32),  # segm/eval/miou.py: 512/480, 640/608
             ("ade20k", "setr"): (512, 341),  # SETR: 2/3 of the window
             ("cityscapes", "segmenter"): (768, 736), ("cityscapes", "setr"): (768, 512),
             ("cityscapes", "segformer"): (1024, 768),
             ("pascal_context", "segmenter"): (480, 448), ("pascal_context", "setr"): (480, 320),
             ("pascal_context", "fcn"): (480, 320), ("pascal_context", "deeplabv3plus"): (480, 320)}.get((kind, family))
    test_scale = {("ade20k", "segformer"): [2048, crop], ("ade20k", "segmenter"): [2048, 512],
                  ("ade20k", "setr"): [2048, 512], ("cityscapes", "setr"): [2049, 1025],
                  ("pascal_context", "segmenter"): [4160, 520]}.get(
        (kind, family), [2048, 1024] if kind == "cityscapes" else [520, 520] if kind == "pascal_context" else [2048, 512])
    if slide:
        return {"mode": "slide", "window": slide[0], "stride": slide[1], "test_scale": test_scale}
    return {"mode": "whole", "window": None, "stride": None, "test_scale": test_scale}


def run_shipped(name: str, models: tuple[str, ...], multi_scale: tuple[str, ...], tmp_path: Path, monkeypatch,
                capsys, quick: bool) -> None:
    data, weights = tmp_path / "data", tmp_path / "weights"
    monkeypatch.setenv("SEGBENCH_DATA", str(data))
    monkeypatch.setenv("SEGBENCH_WEIGHTS", str(weights))
    write_data(data)
    path = derive_suite(name, models, multi_scale, tmp_path, quick)
    suite = load_suite(path)
    kind = suite.datasets[next(iter(suite.datasets))].kind
    expected = {}
    for key, spec in suite.models.items():
        checkpoint = Path(spec.checkpoint)
        assert checkpoint.is_relative_to(weights), checkpoint  # the path the suite names, under SEGBENCH_WEIGHTS
        fmt = write_checkpoint(spec.arch, checkpoint, kind)
        with torch.device("meta"):
            info = create_model(spec.arch, num_classes=len(DATASETS[kind].classes)).info
        expected[key] = (fmt, hashlib.sha256(checkpoint.read_bytes()).hexdigest(),
                         paper_protocol(kind, info.family, info.crop_size))
    for i, sweep in enumerate(suite.corruption):  # the Cityscapes-C folder, written as the suite's header says
        grid = yaml.safe_load(path.read_text())["corruption"][i]
        args = ["corrupt", kind, "--root", suite.datasets[sweep.dataset].root, "--out", sweep.root, "--workers", "1"]
        if quick:
            args += ["--corruptions", ",".join(grid["corruptions"]), "--severities", "1"]
        assert cli.main(args + ["--json"]) == 0
    capsys.readouterr()

    assert cli.main(["run", str(path), "--json"]) == 0, capsys.readouterr().err
    document = json.loads(capsys.readouterr().out)
    records = document["records"]
    failed = [(r["model"], r["kind"], r["error"]["message"]) for r in records if r["status"] != "ok"]
    assert not failed
    assert document["report"]  # the report rendered from the records
    evaluated = {(r["model"], r["protocol_name"]) for r in records if r["kind"] == "eval"}
    assert evaluated == {(m, e.protocol) for e in suite.evaluate for m in e.models or suite.models}
    assert {r["model"] for r in records if r["kind"] == "profile"} == \
        {m for p in suite.profile for m in p.models or suite.models}
    assert {r["model"] for r in records if r["kind"] == "corruption"} == \
        {m for c in suite.corruption for m in c.models or suite.models}
    for record in records:
        if record["kind"] == "profile":
            assert record["metrics"]["params"] > 0 and record["metrics"]["macs"] > 0
            continue
        fmt, sha256, protocol = expected[record["model"]]
        assert record["checkpoint_load"]["format"] == fmt and record["checkpoint_load"]["complete"], record["model"]
        assert record["checkpoint_sha256"] == sha256
        assert math.isfinite(record["metrics"]["mIoU"])
        recorded = record["protocol"]
        assert {k: recorded[k] for k in protocol} == protocol, (record["model"], recorded["source"])
        multi_scale = record.get("protocol_name") == "multi_scale"
        assert recorded["flip"] is multi_scale
        assert recorded["scales"] == (list(MS_RATIOS) if multi_scale else [1.0])


@pytest.mark.parametrize("name", list(CI_MODELS))
def test_shipped_suite_small_models(name, tmp_path, monkeypatch, capsys):
    run_shipped(name, CI_MODELS[name], CI_MULTI_SCALE[name], tmp_path, monkeypatch, capsys, quick=True)


@pytest.mark.slow
@pytest.mark.parametrize("name,model", ALL_MODELS)
def test_shipped_suite_every_model(name, model, tmp_path, monkeypatch, capsys):
    run_shipped(name, (model,), (model,), tmp_path, monkeypatch, capsys, quick=False)
