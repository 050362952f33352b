"""`segbench eval --predictions` and `segbench compare` end to end, in process."""
from __future__ import annotations

import json

import numpy as np
import pytest
from layouts import save, write_cityscapes

from segbench.cli import main
from segbench.data.datasets import CITYSCAPES_LUT, build_dataset, materialize_synthetic


def run_json(capsys, argv: list[str]) -> dict:
    assert main(argv + ["--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    materialize_synthetic(root, {"val": 6}, image_size=48)
    return root


def write_predictions(folder, dataset, corrupt: float = 0.0, seed: int = 0, label_ids: bool = False):
    """Predictions = ground truth (train ids; unlabelled pixels predicted as class 0),
    with a fraction of pixels set to random classes."""
    rng = np.random.default_rng(seed)
    for i in range(len(dataset)):
        sample = dataset[i]
        pred = np.where(sample.label == 255, 0, sample.label).astype(np.uint8)
        noise = rng.random(pred.shape) < corrupt
        pred[noise] = rng.integers(0, dataset.num_classes, noise.sum())
        save(folder / f"{sample.name}.png", pred + 1 if label_ids else pred)  # ADE-style ids: class k -> k + 1


def test_scoring_perfect_predictions(tmp_path, capsys, synthetic_root):
    dataset = build_dataset("synthetic", "val", str(synthetic_root))
    write_predictions(tmp_path / "train_ids", dataset)
    args = ["eval", "--dataset", "synthetic", "--root", str(synthetic_root), "--split", "val", "--bootstrap", "50"]
    out = run_json(capsys, args + ["--predictions", str(tmp_path / "train_ids"), "--ids", "train"])
    metrics = out["metrics"]
    assert metrics["mIoU"] == pytest.approx(100) and metrics["aAcc"] == pytest.approx(100)
    assert metrics["per_image"]["mIoU_mean"] == pytest.approx(100) and metrics["per_image"]["images"] == 6
    assert metrics["mIoU_ci"]["low"] == pytest.approx(100) and metrics["mIoU_ci"]["resamples"] == 50
    # 48 px scenes have no segment of 48^2 px or more: the large bucket is empty (no mIoU)
    assert {b: v["mIoU"] for b, v in metrics["size"].items()} == {"small": 100, "medium": 100, "large": None}
    assert sum(v["pixels"] for v in metrics["size"].values()) == sum(int((dataset[i].label != 255).sum())
                                                                    for i in range(len(dataset)))
    # the same predictions written in the dataset's label ids (0 = other, k + 1 = class k)
    write_predictions(tmp_path / "label_ids", dataset, label_ids=True)
    out = run_json(capsys, args + ["--predictions", str(tmp_path / "label_ids"), "--ids", "label"])
    assert out["metrics"]["mIoU"] == pytest.approx(100) and out["ids"] == "label"


def test_compare_two_prediction_folders(tmp_path, capsys, synthetic_root):
    dataset = build_dataset("synthetic", "val", str(synthetic_root))
    write_predictions(tmp_path / "good", dataset, corrupt=0.05, seed=1)
    write_predictions(tmp_path / "bad", dataset, corrupt=0.6, seed=2)
    base = ["eval", "--dataset", "synthetic", "--root", str(synthetic_root), "--no-size", "--bootstrap", "0"]
    for name in ("good", "bad"):
        assert main(base + ["--predictions", str(tmp_path / name), "--out", str(tmp_path / f"{name}.json")]) == 0
    record = json.loads((tmp_path / "good.json").read_text())
    assert record["kind"] == "eval" and record["status"] == "ok" and "size" not in record["metrics"]
    assert (tmp_path / record["per_image_file"]).is_file()
    capsys.readouterr()
    result = run_json(capsys, ["compare", str(tmp_path / "good.json"), str(tmp_path / "bad.json"), "--resamples", "300"])
    assert result["delta_mIoU"] > 0 and result["low"] > 0 and result["p_value"] < 0.05
    assert result["mIoU_a"] == pytest.approx(record["metrics"]["mIoU"])
    reverse = run_json(capsys, ["compare", str(tmp_path / "bad.json"), str(tmp_path / "good.json"), "--resamples", "300"])
    assert reverse["delta_mIoU"] == pytest.approx(-result["delta_mIoU"]) and reverse["p_value"] > 0.95


def test_cityscapes_label_ids_are_detected(tmp_path, capsys):
    rng = np.random.default_rng(4)
    label_ids = [rng.integers(0, 34, (12, 20)) for _ in range(3)]
    names = write_cityscapes(tmp_path / "cs", label_ids)
    for name, labels in zip(names, label_ids):
        noisy = np.where(rng.random(labels.shape) < 0.3, rng.integers(0, 34, labels.shape), labels).astype(np.uint8)
        save(tmp_path / "label" / f"{name}_leftImg8bit.png", noisy)  # named as the official evaluator expects
        save(tmp_path / "train" / f"{name}.png", CITYSCAPES_LUT[noisy].astype(np.uint8))
    args = ["eval", "--dataset", "cityscapes", "--root", str(tmp_path / "cs"), "--bootstrap", "0", "--no-size"]
    as_label = run_json(capsys, args + ["--predictions", str(tmp_path / "label")])
    as_train = run_json(capsys, args + ["--predictions", str(tmp_path / "train")])
    assert as_label["ids"] == "label" and as_train["ids"] == "train"
    assert as_label["metrics"]["mIoU"] == pytest.approx(as_train["metrics"]["mIoU"], abs=1e-12)
    assert 0 < as_label["metrics"]["mIoU"] < 100


def test_missing_or_bad_predictions_are_clear_errors(tmp_path, capsys, synthetic_root):
    dataset = build_dataset("synthetic", "val", str(synthetic_root))
    write_predictions(tmp_path / "preds", dataset)
    (tmp_path / "preds" / f"{dataset[2].name}.png").unlink()
    args = ["eval", "--dataset", "synthetic", "--root", str(synthetic_root), "--predictions", str(tmp_path / "preds")]
    assert main(args) == 2
    assert f"no prediction for 1 of 6 images" in capsys.readouterr().err
    save(tmp_path / "preds" / f"{dataset[2].name}.png", np.full(dataset[2].label.shape, 77, np.uint8))
    assert main(args) == 2
    assert "[77]" in capsys.readouterr().err
    assert main(["eval", "--dataset", "synthetic"]) == 2  # neither a model nor predictions


def test_auto_ids_ask_when_label_id_predictions_fit_both_spaces(tmp_path, capsys, synthetic_root):
    # ADE20K-style reduce-zero-label ids (class k -> k + 1) without 0 and without the top id: every
    # value is valid as a training id too, and reading them so would shift every class by one
    dataset = build_dataset("synthetic", "val", str(synthetic_root))
    top = dataset.num_classes - 1
    for i in range(len(dataset)):
        label = dataset[i].label
        pred = np.where((label == 255) | (label == top), 0, label).astype(np.uint8) + 1  # values 1..top
        save(tmp_path / "label_ids" / f"{dataset[i].name}.png", pred)
    args = ["eval", "--dataset", "synthetic", "--root", str(synthetic_root), "--bootstrap", "0", "--no-size",
            "--predictions", str(tmp_path / "label_ids")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'label_ids'}: cannot tell whether the predictions hold training ids" in err
    assert "pass --ids train or --ids label" in err
    as_label = run_json(capsys, args + ["--ids", "label"])
    assert as_label["ids"] == "label" and as_label["metrics"]["mIoU"] > 80
    # the same scenes in training ids use 0, which would be "other" (unlabelled) as a label id: decided
    write_predictions(tmp_path / "train_ids", dataset)
    as_train = run_json(capsys, args[:-1] + [str(tmp_path / "train_ids")])
    assert as_train["ids"] == "train" and "unlabelled as label ids" in as_train["ids_note"]


def test_compare_names_a_missing_or_damaged_per_image_file(tmp_path, capsys, synthetic_root):
    dataset = build_dataset("synthetic", "val", str(synthetic_root))
    write_predictions(tmp_path / "preds", dataset)
    args = ["eval", "--dataset", "synthetic", "--root", str(synthetic_root), "--no-size", "--bootstrap", "0",
            "--predictions", str(tmp_path / "preds")]
    for name in ("a", "b"):
        assert main(args + ["--out", str(tmp_path / f"{name}.json")]) == 0
    sidecar = tmp_path / json.loads((tmp_path / "b.json").read_text())["per_image_file"]
    sidecar.unlink()  # as in a baseline folder that kept only the records
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "a.json"), str(tmp_path / "b.json")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'b.json'}: its per-image counts {sidecar} are missing" in err and "Traceback" not in err
    sidecar.write_bytes(b"not an npz")
    assert main(["compare", str(tmp_path / "a.json"), str(tmp_path / "b.json")]) == 2
    assert f"{sidecar}: unreadable per-image counts" in capsys.readouterr().err
