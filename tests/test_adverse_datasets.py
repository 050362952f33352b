"""ACDC and Dark Zurich readers on tiny fixtures in their official layouts."""
from __future__ import annotations

import numpy as np
import pytest
from layouts import write_acdc, write_dark_zurich

from segbench.data.datasets import DATASETS, DatasetError, build_dataset
from segbench.engine.protocols import paper_protocol
from segbench.models import create_model


def _maps(seed: int, count: int = 2, h: int = 6, w: int = 8):
    rng = np.random.default_rng(seed)
    labels = [rng.integers(0, 19, (h, w)) for _ in range(count)]
    for label in labels:
        label[0, 0] = 255
    invalid = [(rng.random((h, w)) < 0.3).astype(np.uint8) for _ in range(count)]
    return labels, invalid


def test_acdc_reads_each_condition_and_ignores_invalid_regions(tmp_path):
    conditions = {c: _maps(i) for i, c in enumerate(("fog", "night", "rain", "snow"))}
    names = write_acdc(tmp_path, {c: m[0] for c, m in conditions.items()}, {c: m[1] for c, m in conditions.items()})
    everything = build_dataset("acdc", "val", str(tmp_path))
    assert len(everything) == 8 and everything.name == "acdc/all/val" and everything.num_classes == 19
    night = build_dataset("acdc", "val", str(tmp_path), conditions=["night"])
    assert night.name == "acdc/night/val" and len(night) == 2
    labels, invalid = conditions["night"]
    for i, sample in enumerate(night):
        assert sample.name == names[2 + i] and sample.image.shape == (6, 8, 3)
        np.testing.assert_array_equal(sample.label, np.where(invalid[i] > 0, 255, labels[i]))
    scored = build_dataset("acdc", "val", str(tmp_path), conditions="night", invalid_regions="score")
    np.testing.assert_array_equal(scored[0].label, labels[0])


def test_acdc_errors_name_what_to_do(tmp_path):
    labels, _ = _maps(0)
    write_acdc(tmp_path, {"fog": labels})  # no invalid masks
    with pytest.raises(DatasetError, match="invalid_regions: score"):
        build_dataset("acdc", "val", str(tmp_path), conditions=["fog"])
    assert len(build_dataset("acdc", "val", str(tmp_path), conditions=["fog"], invalid_regions="score")) == 2
    with pytest.raises(DatasetError, match="conditions must be among"):
        build_dataset("acdc", "val", str(tmp_path), conditions=["haze"])
    with pytest.raises(DatasetError, match="rgb_anon"):
        build_dataset("acdc", "val", str(tmp_path), conditions=["snow"], invalid_regions="score")
    with pytest.raises(DatasetError, match="unknown split"):
        build_dataset("acdc", "test", str(tmp_path))


def test_acdc_label_outside_train_ids_is_an_error(tmp_path):
    write_acdc(tmp_path, {"rain": [np.full((4, 4), 25)]}, {"rain": [np.zeros((4, 4))]})
    with pytest.raises(DatasetError, match="Cityscapes train ids"):
        build_dataset("acdc", "val", str(tmp_path), conditions=["rain"])[0]


def test_dark_zurich_val(tmp_path):
    labels, invalid = _maps(7, count=3)
    names = write_dark_zurich(tmp_path, labels, invalid)
    dataset = build_dataset("dark_zurich", "val", str(tmp_path))
    assert dataset.name == "dark_zurich/val" and [s.name for s in dataset] == names
    for sample, label, inv in zip(dataset, labels, invalid):
        np.testing.assert_array_equal(sample.label, np.where(inv > 0, 255, label))
    assert DATASETS["dark_zurich"].classes == DATASETS["cityscapes"].classes


def test_cityscapes_models_keep_their_cityscapes_protocol(tmp_path):
    labels, invalid = _maps(0)
    write_dark_zurich(tmp_path, labels, invalid)
    model = create_model("segformer_b0", num_classes=19)
    protocol = paper_protocol(model.info, build_dataset("dark_zurich", "val", str(tmp_path)))
    assert (protocol.mode, protocol.window, protocol.stride, protocol.test_scale) == ("slide", 1024, 768, (1920, 1080))
