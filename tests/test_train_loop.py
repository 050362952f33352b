"""The training loop: exact resumption, process-count invariance (2 gloo processes vs one),
gradient accumulation, checkpoints that load with weights_only, mixed precision on CPU."""
from __future__ import annotations

import json
import pickle
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp

from segbench.data.datasets import Synthetic
from segbench.data.loader import IterationBatches
from segbench.engine.train import LoopOptions, build_model, read_log, resolve_recipe, train
from segbench.models.checkpoints import load_model, read_file
from test_distributed_eval import _free_port

TINY = dict(iters=6, batch_size=4, crop_size=32)


def tiny_data() -> Synthetic:
    return Synthetic("train", num_images=5, image_size=48)  # 5 images: epochs end inside a batch


def tiny_recipe(name: str, **changes):
    return replace(resolve_recipe(name, "", "synthetic", 128, **TINY), **changes)


def run(arch: str, recipe, out, **options):
    model = build_model(arch, 9, recipe, seed=0)
    summary = train(model, tiny_data(), recipe, out, options=LoopOptions(**{"checkpoint_every": 2, **options}))
    return read_log(summary.log)[0], model.state_dict(), summary


class Interrupt(Exception):
    pass


def stop_after(iteration: int):
    def progress(done, loss):
        if done == iteration:
            raise Interrupt
    return progress


@pytest.mark.parametrize("arch, recipe", [
    # AdamW with warmup; drop-path on, so the per-iteration generator matters
    ("segmenter_micro_p8_linear", tiny_recipe("scratch", drop_path=0.1)),
    # SGD with momentum, head lr x10, auxiliary heads, batch norms
    ("setr_micro_p16_naive", tiny_recipe("setr_ade20k")),
])
def test_interrupted_run_resumes_exactly(tmp_path, arch, recipe):
    losses, weights, _ = run(arch, recipe, tmp_path / "straight", resume=False)

    model = build_model(arch, 9, recipe, seed=0)
    with pytest.raises(Interrupt):  # dies after iteration 5; the last checkpoint is at 4
        train(model, tiny_data(), recipe, tmp_path / "broken", options=LoopOptions(checkpoint_every=2),
              progress=stop_after(5))
    assert read_file(tmp_path / "broken" / "last.pth")["iteration"] == 4
    resumed_losses, resumed_weights, summary = run(arch, recipe, tmp_path / "broken", workers=1)

    assert summary.resumed_from == 4
    assert resumed_losses == losses  # the log keeps 1-4 and appends 5-6 from the resumed run
    assert weights.keys() == resumed_weights.keys()
    for key in weights:
        assert torch.equal(weights[key], resumed_weights[key]), key


def test_finished_run_is_not_redone_and_another_recipe_is_refused(tmp_path):
    recipe = tiny_recipe("scratch", iters=2)
    run("segmenter_micro_p32_linear", recipe, tmp_path)
    _, _, again = run("segmenter_micro_p32_linear", recipe, tmp_path)
    assert again.resumed_from == 2 and again.seconds == 0.0
    with pytest.raises(ValueError, match="another recipe"):
        run("segmenter_micro_p32_linear", replace(recipe, lr=1e-4), tmp_path)


def test_final_checkpoint_loads_for_evaluation(tmp_path):
    recipe = tiny_recipe("scratch", iters=2)
    _, weights, summary = run("segmenter_micro_p8_linear", recipe, tmp_path)
    model, report = load_model("segmenter_micro_p8_linear", summary.checkpoint, 9)
    assert report.complete and model.info.crop_size == 32  # built for the training crop
    assert all(torch.equal(model.state_dict()[k], v) for k, v in weights.items())
    assert read_file(summary.checkpoint)["recipe"]["name"] == "scratch"


def test_global_batch_does_not_depend_on_the_split():
    recipe = tiny_recipe("scratch")
    common = dict(dataset=tiny_data(), batch_size=4, crop=(32, 32), mean=(0, 0, 0), std=(1, 1, 1), seed=3)
    whole = IterationBatches(**common)[7]
    ranks = [IterationBatches(**common, first_slot=2 * r, micro_batches=2, micro_batch_size=1)[7] for r in range(2)]
    assert recipe.batch_size == 4
    torch.testing.assert_close(torch.cat([x.flatten(0, 1) for x, _ in ranks]), whole[0].flatten(0, 1))
    torch.testing.assert_close(torch.cat([y.flatten(0, 1) for _, y in ranks]), whole[1].flatten(0, 1))
    assert not torch.equal(whole[0], IterationBatches(**common)[8][0])


DDP_ARCH = "segmenter_micro_p8_linear"
DDP_RECIPE = dict(name="segmenter_ade20k", drop_path=0.0)  # SGD, loss averaged over labelled pixels


def _ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    torch_dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        losses, weights, _ = run(DDP_ARCH, tiny_recipe(**DDP_RECIPE, iters=3), out, resume=False)
        if rank == 0:
            with open(f"{out}/result.pkl", "wb") as f:
                pickle.dump((losses, weights), f)
    finally:
        torch_dist.destroy_process_group()


def test_two_gloo_processes_match_one_process_with_the_same_global_batch(tmp_path):
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path / "ddp")), nprocs=2, join=True)
    with open(tmp_path / "ddp" / "result.pkl", "rb") as f:
        ddp_losses, ddp_weights = pickle.load(f)
    recipe = tiny_recipe(**DDP_RECIPE, iters=3)
    one_losses, one_weights, _ = run(DDP_ARCH, recipe, tmp_path / "one", resume=False)
    acc_losses, acc_weights, _ = run(DDP_ARCH, recipe, tmp_path / "acc", resume=False, accumulate=2)
    assert len(ddp_losses) == 3 and ddp_losses[0] > ddp_losses[-1]
    np.testing.assert_allclose(ddp_losses, one_losses, rtol=1e-5)
    np.testing.assert_allclose(acc_losses, one_losses, rtol=1e-5)
    for key, value in one_weights.items():
        torch.testing.assert_close(ddp_weights[key], value, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(acc_weights[key], value, rtol=1e-4, atol=1e-6)


def test_bf16_autocast_runs_on_cpu_and_logs_every_iteration(tmp_path):
    losses, _, summary = run("segformer_micro", tiny_recipe("scratch", iters=2), tmp_path, amp="bf16")
    assert len(losses) == 2 and all(np.isfinite(losses))
    entries = [json.loads(line) for line in summary.log.read_text().splitlines()]
    assert [e["iter"] for e in entries] == [1, 2] and {"loss", "lr", "seconds", "data_seconds"} <= set(entries[0])


def test_batch_that_does_not_split_is_refused(tmp_path):
    with pytest.raises(ValueError, match="does not split"):
        run("segmenter_micro_p32_linear", tiny_recipe("scratch", batch_size=3), tmp_path, accumulate=2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("amp", ["fp16", "bf16"])
def test_mixed_precision_on_gpu(tmp_path, amp):
    recipe = tiny_recipe("setr_ade20k", iters=3)  # batch norms, auxiliary heads, SGD
    model = build_model("setr_micro_p16_naive", 9, recipe)
    summary = train(model, tiny_data(), recipe, tmp_path, "cuda", LoopOptions(amp=amp, workers=1))
    losses = read_log(summary.log)[0]
    assert len(losses) == 3 and all(np.isfinite(losses))
    assert read_file(summary.checkpoint)["amp"] == amp
