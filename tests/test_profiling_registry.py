"""`segbench profile` finishes on every registered model: parameters and MACs at 512 x 512
(the papers' ADE20K size), counted on the meta device, for all of them (ViT-L included: no
memory, no forward); the quickstart-sized ones also run for real (fvcore, latency, the test
pipeline, memory) at 64 x 64."""
from __future__ import annotations

import json

import pytest

from segbench.cli import main
from segbench.models import describe_models, list_models

ROWS = {r["name"]: r for r in describe_models()}
REAL_LIMIT = 1e6  # parameters: the micro models of the quickstart


def profile(capsys, argv: list[str]) -> dict:
    assert main(["profile", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("name", list_models())
def test_profile_every_model_on_the_meta_device(capsys, name):
    record = profile(capsys, [name, "--size", "512x512", "--runs", "0", "--no-fvcore"])
    m = record["metrics"]
    assert m["params"] == ROWS[name]["params"] and m["macs"] > 0 and m["latency_ms"] is None
    top = [r for r in record["profile"]["by_module"] if "." not in r["name"]]
    assert {r["name"] for r in top} >= {"encoder", "decoder"} and sum(r["macs"] for r in top) == m["macs"]


@pytest.mark.parametrize("name", [n for n in list_models() if ROWS[n]["params"] < REAL_LIMIT])
def test_profile_small_models_for_real(capsys, name):
    record = profile(capsys, [name, "--size", "64x64", "--dataset", "synthetic", "--runs", "1", "--warmup", "0",
                              "--device", "cpu"])
    m = record["metrics"]
    assert m["macs_fvcore"] > 0 and m["latency_ms"] > 0 and m["pipeline_images_per_second"] > 0
    assert m["peak_memory_mb"] > 0 and record["profile"]["latency"]["device"] == "cpu"
