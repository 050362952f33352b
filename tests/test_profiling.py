"""segbench.profiling: counts against hand-computed values, the record's fields, batch search,
memory, the `segbench profile` command and the suite's `profile` block.
(Paper numbers: tests/test_profiling_papers.py; every registered model: test_profiling_registry.py.)"""
from __future__ import annotations

import json
import mmap
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from segbench import profiling
from segbench.cli import main
from segbench.models import describe_models
from segbench.profiling import MB, count_macs, count_macs_fvcore, count_params, largest_batch, peak_memory
from segbench.runner import plan, profile_job, run_suite
from segbench.suite import SuiteError, load_suite

SCHEMA_METRICS = {"params", "params_encoder", "params_decoder", "params_aux", "macs", "macs_fvcore", "latency_ms",
                  "latency_ms_p10", "latency_ms_p90", "images_per_second", "pipeline_images_per_second",
                  "peak_memory_mb"}


class Attention(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Conv2d(dim, 4, 1)

    def forward(self, x):
        b, c, h, w = x.shape
        q, k, v = self.qkv(x.flatten(2).transpose(1, 2))[:, None].chunk(3, dim=-1)  # one head
        o = F.scaled_dot_product_attention(q, k, v)[:, 0]
        return self.out(o.transpose(1, 2).reshape(b, c, h, w))


class Tiny(nn.Module):
    """conv (3 -> 8, 3x3, stride 2), a one-head attention over the 8 x 8 map, 1x1 conv; an
    auxiliary head that inference never runs."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.decoder = Attention(8)
        self.aux_heads = nn.ModuleList([nn.Conv2d(8, 2, 1)])

    def forward(self, x):
        return self.decoder(self.encoder(x))


# at 16 x 16: 64 positions / tokens of 8 channels
CONV, QKV, ATTENTION, OUT = 8 * 3 * 9 * 64, 64 * 8 * 24, 2 * 64 * 64 * 8, 4 * 8 * 64


def test_macs_match_a_hand_count_attention_included():
    total, rows, by_operator = count_macs(Tiny(), 16, 16)
    assert total == CONV + QKV + ATTENTION + OUT  # aux head not run
    rows = {r["name"]: r for r in rows}
    assert rows["encoder"]["macs"] == CONV and rows["decoder"]["macs"] == QKV + ATTENTION + OUT
    assert rows["decoder.qkv"]["macs"] == QKV and rows["aux_heads"]["macs"] == 0
    assert rows["aux_heads"]["params"] == 8 * 2 + 2 and rows["aux_heads.0"]["params"] == 18
    assert sum(v for op, v in by_operator.items() if "attention" in op) == ATTENTION


def test_meta_device_count_equals_the_real_one():
    with torch.device("meta"):
        meta = Tiny()
    assert count_macs(meta, 16, 24)[0] == count_macs(Tiny(), 16, 24)[0]


def test_fvcore_skips_attention_and_says_so():
    total, skipped = count_macs_fvcore(Tiny(), torch.randn(1, 3, 16, 16))
    assert total == CONV + QKV + OUT
    assert "aten::scaled_dot_product_attention" in skipped


def test_params_split_by_top_level_prefix():
    counts = count_params(Tiny())
    assert counts == {"params": 224 + 216 + 36 + 18, "params_encoder": 224, "params_decoder": 216 + 36,
                      "params_aux": 18}


@pytest.fixture(scope="module")
def micro_record():
    return profiling.profile_model("segformer_micro", 150, 64, 64, runs=3, warmup=1, dataset="synthetic")


def test_record_fields_follow_the_schema(micro_record):
    record = micro_record
    assert set(record["metrics"]) == SCHEMA_METRICS
    assert record["input"] == {"height": 64, "width": 64, "batch_size": 1, "dtype": "float32", "channels_last": False}
    m, prof = record["metrics"], record["profile"]
    row = describe_models("segformer_micro")[0]  # the same counts as `segbench models` (150 classes)
    assert (m["params"], m["params_encoder"], m["params_decoder"]) == (row["params"], row["encoder_params"],
                                                                       row["decoder_params"])
    assert m["macs"] == sum(r["macs"] for r in prof["by_module"] if "." not in r["name"])
    assert 0 < m["macs_fvcore"] and "aten::scaled_dot_product_attention" in prof["fvcore_skipped_ops"]
    assert "FlopCounterMode" in prof["counters"]["macs"] and "fvcore" in prof["counters"]["macs_fvcore"]
    assert "perf_counter" in prof["counters"]["latency_ms"]
    latency = prof["latency"]
    assert latency["device"] == "cpu" and latency["threads"] >= 1 and len(latency["samples_ms"]) == 3
    assert m["latency_ms_p10"] <= m["latency_ms"] <= m["latency_ms_p90"]
    assert m["images_per_second"] == pytest.approx(1e3 / m["latency_ms"])
    assert prof["memory"]["kind"] == "process_peak_rss" and m["peak_memory_mb"] == prof["memory"]["peak_mb"]
    assert prof["pipeline"]["protocol"]["mode"] == "whole" and m["pipeline_images_per_second"] > 0
    json.dumps(record)  # plain JSON


def test_runs_zero_counts_on_the_meta_device_only(monkeypatch):
    devices = []
    create = profiling.create_model

    def spy(*args, **kwargs):
        devices.append(torch.empty(0).device.type)
        return create(*args, **kwargs)

    monkeypatch.setattr(profiling, "create_model", spy)
    record = profiling.profile_model("setr_l16_pup", 150, 512, 512, runs=0, fvcore=False)  # ViT-L: 1 s, no memory
    assert devices == ["meta"]
    assert record["metrics"]["latency_ms"] is None and record["profile"]["latency"] is None
    assert "not" in record["profile"]["counters"]["latency_ms"] and record["metrics"]["params_aux"] > 0
    names = [r["name"] for r in record["profile"]["by_module"]]
    assert "encoder.blocks.23" in names and "aux_heads" in names


def test_max_batch_doubles_up_to_the_limit():
    record = profiling.profile_model("segmenter_micro_p32_linear", 9, 64, 64, batch_size="max", batch_limit=4,
                                     runs=2, warmup=0, fvcore=False, pipeline=False, dataset="synthetic")
    search = record["profile"]["latency"]["batch_search"]
    assert [t["batch_size"] for t in search["tried"]] == [1, 2, 4] and search["stop"] == "limit"
    assert record["input"]["batch_size"] == 4
    assert record["metrics"]["images_per_second"] == pytest.approx(4e3 / record["metrics"]["latency_ms"])


class RunsOutOfMemory(nn.Module):
    def forward(self, x):
        if x.shape[0] >= 4:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return x


def test_max_batch_stops_at_out_of_memory_or_low_free_memory(monkeypatch):
    batch, search = largest_batch(RunsOutOfMemory(), 8, 8, torch.device("cpu"))
    assert batch == 2 and search["stop"] == "out of memory"
    assert search["tried"][-1] == {"batch_size": 4, "fits": False}
    monkeypatch.setattr(profiling, "available_memory_mb", lambda device: 0.0)
    assert largest_batch(RunsOutOfMemory(), 8, 8, torch.device("cpu"))[1]["stop"] == "free memory"


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's peak-RSS reset")
def test_cpu_peak_memory_is_the_blocks_own_peak():
    with peak_memory(torch.device("cpu")) as big:
        # an anonymous mapping is always fresh pages, whatever allocators earlier tests left warm
        block = mmap.mmap(-1, 64 * MB)
        for _ in range(64):  # touch every page, a megabyte at a time (no 64 MB temporary)
            block.write(b"\1" * MB)
        block.close()
    with peak_memory(torch.device("cpu")) as small:
        pass
    assert big["kind"] == "process_peak_rss" and big["increase_mb"] > 60
    assert small["increase_mb"] < 20 and small["peak_mb"] < big["peak_mb"]  # a lifetime peak could not drop


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_paths():
    record = profiling.profile_model("segformer_micro", 9, 128, 128, device="cuda", amp=True, channels_last=True,
                                     batch_size="max", batch_limit=8, runs=3, warmup=1, dataset="synthetic")
    prof = record["profile"]
    assert record["input"]["dtype"] == "float16" and record["input"]["channels_last"]
    assert prof["latency"]["device"] == "cuda" and "CUDA events" in prof["counters"]["latency_ms"]
    assert prof["memory"]["kind"] == "cuda_allocator_peak" and record["metrics"]["peak_memory_mb"] > 0
    assert record["input"]["batch_size"] == 8 and record["metrics"]["pipeline_images_per_second"] > 0


def run_json(capsys, argv):
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_cli_writes_a_record(tmp_path, capsys):
    out = tmp_path / "p.json"
    record = run_json(capsys, ["profile", "segformer_micro", "--size", "64x96", "--dataset", "synthetic", "--runs", "2",
                               "--warmup", "0", "--device", "cpu", "--json", "--out", str(out)])
    assert json.loads(out.read_text()) == record
    assert record["kind"] == "profile" and record["status"] == "ok" and record["env"]["device"] == "cpu"
    assert record["input"]["height"] == 64 and record["input"]["width"] == 96 and record["config"]["num_classes"] == 9
    settings = {k: record["config"]["profile"][k] for k in ("batch_size", "warmup", "runs", "pipeline", "fvcore",
                                                             "amp", "channels_last")}
    assert record["job_id"] == profile_job("segformer_micro", "segformer_micro", 9, "synthetic", "cpu", (64, 96),
                                           settings).id


def test_cli_table_and_breakdown(capsys):
    assert main(["profile", "segmenter_micro_p8_mask", "--size", "64", "--runs", "0", "--no-fvcore", "--breakdown"]) == 0
    out = capsys.readouterr().out
    assert "FlopCounterMode" in out and "not measured" in out and "decoder.blocks.1" in out


@pytest.mark.parametrize("argv,message", [
    (["--size", "64by64"], "HEIGHTxWIDTH"), (["--batch-size", "0"], "positive integer or 'max'"),
    (["--dataset", "kitti"], "unknown dataset"),
])
def test_cli_usage_errors(capsys, argv, message):
    assert main(["profile", "segformer_micro", "--runs", "0", *argv]) == 2
    assert message in capsys.readouterr().err


SUITE = """\
name: cost
device: cpu
results: {results}
datasets:
  syn: {{kind: synthetic, options: {{num_images: 2, image_size: 64}}}}
models:
  seg: {{arch: segformer_micro}}
  p32: {{arch: segmenter_micro_p32_linear}}
profile:
  - {{dataset: syn, warmup: 0, fvcore: false, {fields}}}
"""


def test_suite_profile_block_plans_and_writes_records(tmp_path):
    path = tmp_path / "cost.yaml"
    path.write_text(SUITE.format(results=tmp_path / "results", fields="sizes: [64x64, 32x48], models: [seg], runs: 2"))
    suite = load_suite(path)
    jobs = [j for j in plan(suite) if j.kind == "profile"]
    assert [(j.model, j.config["profile"]["height"], j.config["profile"]["width"]) for j in jobs] == [
        ("seg", 64, 64), ("seg", 32, 48)]
    assert jobs[0].config["device"] == "cpu" and jobs[0].config["num_classes"] == 9 and jobs[0].needs is None
    records = run_suite(suite)
    assert [r["status"] for r in records] == ["ok", "ok"]
    assert records[1]["input"]["width"] == 48 and records[1]["metrics"]["macs_fvcore"] is None
    assert records[0]["dataset"] == "synthetic" and records[0]["model"] == "seg"
    again = run_suite(suite)  # finished jobs are skipped
    assert all(r.get("skipped") for r in again)


@pytest.mark.parametrize("fields,message", [
    ("sizes: [big]", "profile[0].sizes[0]: input size must be HEIGHTxWIDTH"),
    ("batch_size: many", "profile[0].batch_size: batch size must be a positive integer or 'max'"),
    ("models: [nope]", "no model named 'nope'"), ("runs: -1", "profile[0].runs: expected 0 or more"),
])
def test_suite_profile_block_errors(tmp_path, fields, message):
    path = tmp_path / "cost.yaml"
    path.write_text(SUITE.format(results=tmp_path / "results", fields=fields))
    with pytest.raises(SuiteError) as error:
        load_suite(path)
    assert message in str(error.value)


def test_quickstart_profiles_every_model_at_128():
    suite = load_suite(Path(__file__).resolve().parents[1] / "suites" / "quickstart.yaml")
    jobs = [j for j in plan(suite) if j.kind == "profile"]
    assert sorted(j.model for j in jobs) == sorted(suite.models)
    assert all(j.config["device"] == "cpu" and j.config["profile"]["height"] == 128 for j in jobs)


@pytest.mark.parametrize("kernel", profiling.SDPA_KERNELS)
def test_every_attention_kernel_gets_the_same_count(kernel):
    # the kernels this torch has are registered with one formula: Q K^T and softmax(.) V per head
    if not hasattr(torch.ops.aten, kernel):
        pytest.skip(f"torch {torch.__version__} has no aten.{kernel}")
    formula = profiling.ATTENTION_FORMULAS[getattr(torch.ops.aten, kernel)]
    assert formula((2, 3, 10, 4), (2, 3, 7, 4), (2, 3, 7, 5)) // 2 == 2 * 3 * 10 * 7 * (4 + 5)


@torch.library.custom_op("segbench_test::toy_attention", mutates_args=())
def toy_attention(q: torch.Tensor) -> torch.Tensor:
    return q.clone()


class UsesAnUnknownAttentionKernel(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Conv2d(3, 3, 1)

    def forward(self, x):
        return toy_attention(self.proj(x))


def test_an_attention_operator_without_a_formula_is_an_error_naming_it():
    with pytest.raises(profiling.UncountedOperatorError, match="segbench_test.toy_attention"):
        count_macs(UsesAnUnknownAttentionKernel(), 8, 8)
