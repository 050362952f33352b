"""`segbench bench`'s scale measurements: mmsegmentation 1.2.2 runs the same function with the
transferred weights (so its loop is a fair peer), and the quick bench reports the three
measurements. No timing is asserted: a benchmark, not a speed test."""
from __future__ import annotations

import json

import pytest
import torch

from segbench.bench import randomize_statistics
from segbench.bench_pipeline import import_mmseg, mmseg_segformer, mmseg_segmenter
from segbench.cli import EXIT_OK, main
from segbench.models import create_model


@pytest.fixture(scope="module")
def mmseg():
    module, reason = import_mmseg()
    if module is None:
        pytest.skip(f"mmsegmentation not importable: {reason}")
    return module


def test_segformer_weights_transfer_to_mmseg(mmseg):
    torch.manual_seed(0)
    ours = randomize_statistics(create_model("segformer_b0", num_classes=11))
    theirs = mmseg_segformer(ours)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        # logits at 1/4 resolution on both sides, before any resize
        torch.testing.assert_close(ours(x), theirs.decode_head(theirs.backbone(x)), atol=1e-4, rtol=1e-4)


def test_segmenter_weights_transfer_to_mmseg(mmseg):
    torch.manual_seed(0)
    ours = create_model("segmenter_t16_mask", num_classes=7, crop_size=64).eval()
    theirs = mmseg_segmenter(ours, 64, 42)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs.encode_decode(x, [dict(img_shape=(64, 64))]), atol=1e-4, rtol=1e-4)


@pytest.mark.slow  # the whole quick bench, both loops, corruption runs, two fresh processes: 70 s on 2 shared cores
def test_quick_bench_reports_the_scale_measurements(tmp_path, mmseg):
    out = tmp_path / "bench.json"
    argv = ["bench", "--quick", "--size", "64", "--rounds", "1", "--images", "1", "--out", str(out)]
    assert main(argv) == EXIT_OK
    scale = json.loads(out.read_text())["scale"]
    comparisons = scale["mmseg_pipeline"]["comparisons"]
    assert [c["model"] for c in comparisons] == ["segformer_b0", "segmenter_t16_mask"]
    for c in comparisons:
        single, multi = c["single_scale"], c["multi_scale"]
        assert single["pixel_agreement"] == 1.0 and single["max_probability_difference"] < 1e-4
        assert "flip" in multi["protocol"] and multi["ours_images_per_second"] > 0
        assert single["speedup"]["min"] <= single["speedup"]["median"] <= single["speedup"]["max"]
    corruption = scale["corruption"]
    assert set(corruption["images_per_second"]) == {"plain", "plain_2_processes", "workers_1", "workers_2"}
    assert corruption["plain_two_processes_speedup"] > 0 and corruption["two_workers_share_of_plain_two"] > 0
    assert set(corruption["png_encoding"]) == {"segbench", "opencv sub huffman-only", "pillow level 1", "pillow level 6"}
    memory = scale["memory"]
    assert [r["images"] for r in memory["runs"]] == [10, 40] and memory["ratio"] > 0
