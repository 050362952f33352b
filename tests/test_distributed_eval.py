"""Distributed evaluation (2 gloo processes on CPU) reproduces the one-process result exactly."""
from __future__ import annotations

import pickle
import socket

import numpy as np
import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp

from segbench import dist
from segbench.data.datasets import Synthetic
from segbench.engine.evaluate import Protocol, collect_results, evaluate, standard_evaluators
from segbench.models import ModelInfo

NUM_IMAGES = 7  # odd: the two shards differ in size


class TinyNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 9, 5, stride=4, padding=2)
        self.info = ModelInfo(name="tiny", family="test", encoder="", decoder="", num_classes=9, patch_size=1,
                              output_stride=4, crop_size=48)

    def forward(self, x):
        return self.conv(x)


def _evaluate_tiny() -> dict:
    torch.set_num_threads(1)
    model = TinyNet()
    dataset = Synthetic("val", num_images=NUM_IMAGES, image_size=64)
    evaluators = standard_evaluators(dataset, size_breakdown=True, bootstrap=200)
    evaluate(model, dataset, Protocol(mode="slide", window=48, stride=32), evaluators)
    for evaluator in evaluators:  # synchronize is idempotent: a second call must not add the shards again
        evaluator.synchronize()
    seg, size, boundary, calibration = evaluators
    return {"matrix": seg.confusion.matrix, "names": seg.per_image.names, "counts": seg.per_image.counts,
            "size": size.breakdown.matrices, "segments": size.breakdown.segments,
            "boundary": boundary.state.boundary,
            "correct_hist": calibration.state.correct_hist, "wrong_hist": calibration.state.wrong_hist,
            "bin_pixels": calibration.state.bin_pixels, "results": collect_results(evaluators)}


def _worker(rank: int, world: int, port: int, out: str) -> None:
    torch_dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        assert dist.world_size() == world and list(dist.shard(NUM_IMAGES)) == list(range(rank, NUM_IMAGES, world))
        result = _evaluate_tiny()
        if rank == 0:
            with open(out, "wb") as f:
                pickle.dump(result, f)
    finally:
        torch_dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_processes_reproduce_one_process_exactly(tmp_path):
    out = tmp_path / "rank0.pkl"
    mp.spawn(_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    with open(out, "rb") as f:
        sharded = pickle.load(f)
    single = _evaluate_tiny()
    np.testing.assert_array_equal(sharded["matrix"], single["matrix"])
    assert sharded["names"] == single["names"]  # per-image rows back in dataset order
    np.testing.assert_array_equal(sharded["counts"], single["counts"])
    np.testing.assert_array_equal(sharded["size"], single["size"])
    np.testing.assert_array_equal(sharded["segments"], single["segments"])
    for key in ("boundary", "correct_hist", "wrong_hist", "bin_pixels"):  # integer states: exact
        np.testing.assert_array_equal(sharded[key], single[key], err_msg=key)
    for key in ("mIoU", "mAcc", "aAcc", "fwIoU", "per_image", "mIoU_ci", "size", "boundary"):
        assert sharded["results"][key] == single["results"][key], key
    # Float sums (confidence, NLL, Brier) add in another order over two shards: equal to rounding.
    for key in ("ECE", "NLL", "Brier", "AUROC", "AUPR_error", "FPR95"):
        assert abs(sharded["results"]["calibration"][key] - single["results"]["calibration"][key]) < 1e-9, key
    assert single["matrix"].sum() > 0 and single["boundary"][0].sum() > 0 and single["wrong_hist"].sum() > 0
