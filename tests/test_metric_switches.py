"""The suite's switches for the added metrics: off per evaluation block, validated at load."""
from __future__ import annotations

import pytest

from segbench.results import load_records
from segbench.runner import run_suite
from segbench.suite import SuiteError, load_suite

SUITE = """\
name: switches
results: {results}
datasets:
  syn: {{kind: synthetic, options: {{num_images: 2, image_size: 48}}}}
models:
  m: {{arch: segformer_micro, weights: random}}
evaluate:
  - {{dataset: syn, max_images: 1}}
  - {{dataset: syn, max_images: 1, boundary: false, calibration: false, size_breakdown: false}}
  - {{dataset: syn, max_images: 1, protocol: multi_scale, scales: [1.0], flip: true, boundary_dilation: 0.05}}
"""


def write(tmp_path, text: str):
    path = tmp_path / "s.yaml"
    path.write_text(text.format(results=tmp_path / "results"))
    return path


def test_switches_reach_the_records(tmp_path):
    suite = load_suite(write(tmp_path, SUITE))
    run_suite(suite)
    records = sorted(load_records(suite.results_dir), key=lambda r: (r["protocol_name"], "boundary" in r["metrics"]))
    merged, plain, default = records  # multi_scale sorts first
    assert "boundary" not in plain["metrics"] and "calibration" not in plain["metrics"] and "size" not in plain["metrics"]
    assert default["metrics"]["boundary"]["dilation_ratio"] == 0.02
    assert default["metrics"]["calibration"]["probabilities"] == "softmax of the single view's logits"
    assert merged["metrics"]["boundary"]["dilation_ratio"] == 0.05
    assert merged["metrics"]["calibration"]["probabilities"].startswith("merged: mean softmax of 2 views")


@pytest.mark.parametrize("value", [0, 1.5, -0.1])
def test_boundary_dilation_is_checked_at_load(tmp_path, value):
    text = SUITE.replace("boundary_dilation: 0.05", f"boundary_dilation: {value}")
    with pytest.raises(SuiteError, match="boundary_dilation"):
        load_suite(write(tmp_path, text))


def test_eval_command_switches_map_to_the_suite_fields(tmp_path, capsys):
    from segbench.cli import _eval_suite, build_parser, main

    def spec(*flags):
        args = build_parser().parse_args(["eval", "segformer_micro", "--dataset", "synthetic", "--random-weights",
                                          *flags])
        return _eval_suite(args).evaluate[0]

    default = spec()
    assert (default.boundary, default.calibration, default.boundary_dilation) == (True, True, 0.02)
    off = spec("--no-boundary", "--no-calibration")
    assert (off.boundary, off.calibration) == (False, False)
    assert spec("--boundary-dilation", "0.05").boundary_dilation == 0.05
    with pytest.raises(SuiteError, match="boundary_dilation"):
        spec("--boundary-dilation", "1.5")
    assert main(["eval", "--predictions", str(tmp_path), "--dataset", "synthetic", "--no-boundary"]) == 2
    assert "apply to a model run" in capsys.readouterr().err
