"""``segbench bench`` runs end to end on tiny settings and reports what it promises: each
comparison computes the same function as its reference (logits within 1e-4), speed-ups
with their spread, efficiencies, and the pipeline next to its forward passes. No timing
is asserted: this is a benchmark, not a speed test."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("transformers")

from segbench.cli import EXIT_OK, EXIT_USAGE, main  # noqa: E402


def test_bench_runs_on_tiny_settings_and_compares_outputs(tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["bench", "--quick", "--size", "64", "--rounds", "2", "--images", "1", "--no-scale", "--out", str(out)]
    assert main(argv) == EXIT_OK
    printed = capsys.readouterr().out
    assert "SegFormer-B0 forward" in printed and "evaluation loop on the synthetic set" in printed
    result = json.loads(out.read_text())

    names = [c["name"] for c in result["comparisons"]]
    assert names == ["SegFormer-B0 forward", "SegFormer-B2 forward", "Segmenter ViT-B/16 encoder",
                     "SETR ViT-B/16 encoder"]
    assert result["matmul"]["macs_per_second"] > 0
    for c in result["comparisons"]:
        assert c["max_abs_diff"] < 1e-4, c["name"]  # the same function as the reference
        assert len(c["samples_ms"]["ours"]) == len(c["samples_ms"]["reference"]) == 2
        assert c["speedup"]["min"] <= c["speedup"]["median"] <= c["speedup"]["max"]
        assert c["ours"]["efficiency"] > 0 and c["reference"]["efficiency"] > 0
    b2 = result["comparisons"][1]["ours"]
    assert b2["executed_gmacs"] < b2["gmacs"]  # the fused decoder's saving is shown, not hidden
    segmenter = result["comparisons"][2]
    assert segmenter["model"]["gmacs"] > segmenter["ours"]["gmacs"]  # the decoder's own cost

    assert [p["model"] for p in result["pipelines"]] == ["segformer_micro", "segmenter_micro_p8_mask"]
    for p in result["pipelines"]:
        single, multi = p["single_scale"], p["multi_scale"]
        assert multi["forwards_per_image"] > single["forwards_per_image"] >= 1
        for r in single["runs"] + multi["runs"]:
            assert 0 < r["forward_seconds"] <= r["predict_seconds"] <= r["total_seconds"]


def test_bench_rejects_bad_settings(capsys):
    assert main(["bench", "--rounds", "0"]) == EXIT_USAGE
    assert "at least 1" in capsys.readouterr().err
