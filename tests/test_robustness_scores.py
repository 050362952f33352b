"""mPC / rPC / CD on hand-computed cases; a missing cell is an error naming it, never a zero."""
from __future__ import annotations

import math

import pytest

from segbench.robustness.corruptions import CorruptionError
from segbench.robustness.scores import corruption_degradation, robustness_scores, severity_curves

GRID = {"gaussian_noise": (1, 2), "fog": (1,)}
MODEL = {("gaussian_noise", 1): 60.0, ("gaussian_noise", 2): 40.0, ("fog", 1): 70.0}
REFERENCE = {("gaussian_noise", 1): 80.0, ("gaussian_noise", 2): 60.0, ("fog", 1): 85.0}


def test_table5_cells_groups_mpc_rpc():
    s = robustness_scores(80.0, MODEL, GRID)
    assert s["corruption"] == {"gaussian_noise": 50.0, "fog": 70.0}  # mean over each one's severities
    assert s["group"] == {"noise": 50.0, "weather": 70.0}
    # mPC averages the corruptions (50, 70), each weighing the same: 60, not the cell mean 56.67.
    assert s["mPC"] == pytest.approx(60.0)
    assert s["rPC"] == pytest.approx(75.0)  # 60 / 80, in %
    assert s["clean"] == 80.0


def test_groups_average_their_corruptions():
    grid = {"gaussian_noise": (1,), "shot_noise": (1,), "fog": (1,)}
    cells = {("gaussian_noise", 1): 10.0, ("shot_noise", 1): 30.0, ("fog", 1): 50.0}
    s = robustness_scores(60.0, cells, grid)
    assert s["group"] == {"noise": 20.0, "weather": 50.0}
    assert s["mPC"] == pytest.approx(30.0)


def test_corruption_degradation_and_relative_cd():
    d = corruption_degradation(80.0, MODEL, 90.0, REFERENCE, GRID, "model", "ref")
    # CD_noise = ((1-.6) + (1-.4)) / ((1-.8) + (1-.6)) = 1.0 / 0.6; CD_fog = 0.3 / 0.15
    assert d["CD"]["gaussian_noise"] == pytest.approx(100 * 1.0 / 0.6)
    assert d["CD"]["fog"] == pytest.approx(200.0)
    assert d["mCD"] == pytest.approx((100 / 0.6 + 200) / 2)
    # relative: subtract the clean degradation (0.2 for the model, 0.1 for the reference) per severity
    # noise: (1.0 - 2 * 0.2) / (0.6 - 2 * 0.1) = 0.6 / 0.4; fog: (0.3 - 0.2) / (0.15 - 0.1) = 2
    assert d["relative_CD"]["gaussian_noise"] == pytest.approx(150.0)
    assert d["relative_CD"]["fog"] == pytest.approx(200.0)
    assert d["relative_mCD"] == pytest.approx(175.0)
    assert d["reference"] == "ref"


def test_the_reference_against_itself_is_100_and_an_undegraded_reference_gives_nan():
    d = corruption_degradation(90.0, REFERENCE, 90.0, REFERENCE, GRID)
    assert d["CD"] == {"gaussian_noise": pytest.approx(100.0), "fog": pytest.approx(100.0)}
    flat = {("fog", 1): 90.0}
    d = corruption_degradation(80.0, {("fog", 1): 70.0}, 90.0, flat, {"fog": (1,)})
    assert d["CD"]["fog"] == pytest.approx(300.0)
    assert math.isnan(d["relative_CD"]["fog"])  # the reference lost nothing: the ratio is undefined


def test_severity_curves_per_group():
    grid = {"gaussian_noise": (1, 2), "shot_noise": (1,), "fog": (1,)}
    cells = {**MODEL, ("shot_noise", 1): 20.0}
    curves = severity_curves(80.0, cells, grid)
    assert curves == {"noise": {0: 80.0, 1: 40.0, 2: 40.0}, "weather": {0: 80.0, 1: 70.0}}


@pytest.mark.parametrize("cells, clean, missing", [
    ({k: v for k, v in MODEL.items() if k != ("gaussian_noise", 2)}, 80.0, "gaussian_noise severity 2"),
    ({**MODEL, ("fog", 1): float("nan")}, 80.0, "fog severity 1"),
    ({**MODEL, ("fog", 1): None}, 80.0, "fog severity 1"),
    (MODEL, None, "the clean images"),
])
def test_a_missing_cell_is_an_error_naming_it(cells, clean, missing):
    with pytest.raises(CorruptionError, match=f"seg_b16: no mIoU for {missing}"):
        robustness_scores(clean, cells, GRID, "seg_b16")
    with pytest.raises(CorruptionError, match=missing):
        severity_curves(clean, cells, GRID, "seg_b16")


def test_a_missing_reference_cell_names_the_reference():
    reference = {k: v for k, v in REFERENCE.items() if k != ("fog", 1)}
    with pytest.raises(CorruptionError, match="deeplab: no mIoU for fog severity 1"):
        corruption_degradation(80.0, MODEL, 90.0, reference, GRID, "model", "deeplab")


def test_relative_cd_is_unstable_where_the_reference_barely_degrades():
    from segbench.robustness.scores import MIN_REFERENCE_DROP

    grid = {"motion_blur": (1, 3), "fog": (1, 3)}
    model = {("motion_blur", 1): 30.0, ("motion_blur", 3): 20.0, ("fog", 1): 25.0, ("fog", 3): 15.0}
    # the reference loses 0.3 points under motion blur (mean of 0.2 and 0.4), 10 under fog
    reference = {("motion_blur", 1): 13.5, ("motion_blur", 3): 13.3, ("fog", 1): 8.7, ("fog", 3): 0.7}
    d = corruption_degradation(40.0, model, 13.7, reference, grid, "model", "p32")
    # without the rule: (0.7 + 0.8 - 2 * 0.6) / (0.865 + 0.867 - 2 * 0.863) = 0.3 / 0.006 = 5000 %
    assert d["relative_CD_unstable"] == ["motion_blur"] and math.isnan(d["relative_CD"]["motion_blur"])
    # fog: (0.75 + 0.85 - 1.2) / (0.913 + 0.993 - 2 * 0.863) = 0.4 / 0.18
    assert d["relative_CD"]["fog"] == pytest.approx(100 * 0.4 / 0.18)
    assert d["relative_mCD"] == pytest.approx(d["relative_CD"]["fog"])  # over the stable corruptions only
    assert math.isfinite(d["CD"]["motion_blur"])  # CD divides by the whole degradation: always given
    just = {("motion_blur", 1): 13.7 - MIN_REFERENCE_DROP, ("motion_blur", 3): 13.7 - MIN_REFERENCE_DROP,
            ("fog", 1): 13.7, ("fog", 3): 13.7}
    d = corruption_degradation(40.0, model, 13.7, just, grid)
    assert d["relative_CD_unstable"] == ["fog"] and not math.isnan(d["relative_mCD"])
    d = corruption_degradation(40.0, model, 13.7, {k: 13.7 for k in just}, grid)
    assert d["relative_CD_unstable"] == ["motion_blur", "fog"] and math.isnan(d["relative_mCD"])


def test_the_quickstarts_reference_degrades_under_every_corruption_of_its_sweep():
    import json
    from pathlib import Path

    import yaml

    from segbench.robustness.scores import MIN_REFERENCE_DROP

    root = Path(__file__).resolve().parents[1]
    (block,) = yaml.safe_load((root / "suites" / "quickstart.yaml").read_text())["corruption"]
    records = [json.loads(p.read_text()) for p in sorted((root / "baselines" / "quickstart").glob("*.json"))]
    cells = {(r["corruption"], r["severity"]): r["metrics"]["mIoU"] for r in records
             if r["kind"] == "corruption" and r["model"] == block["reference"]}
    if not cells:
        pytest.skip(f"the committed baseline has no corruption records of {block['reference']} (make baseline)")
    clean = cells[("clean", 0)]
    for corruption in block["corruptions"]:
        loss = clean - sum(cells[corruption, s] for s in block["severities"]) / len(block["severities"])
        assert loss >= MIN_REFERENCE_DROP, (corruption, loss)
