"""From chance to a learned model: a tiny Segmenter, SETR and SegFormer trained from scratch
on the synthetic scenes with the quickstart's ``scratch`` recipe (CPU, minutes: slow).
Chance is about 5 % mIoU on the 9 synthetic classes (uniform random labels)."""
from __future__ import annotations

import pytest

from segbench.data.datasets import build_dataset
from segbench.engine.evaluate import collect_results, evaluate, standard_evaluators
from segbench.engine.protocols import paper_protocol
from segbench.engine.train import LoopOptions, RECIPES, build_model, train

CHANCE_MIOU = 5.0


def miou(model, dataset) -> float:
    evaluators = standard_evaluators(dataset, size_breakdown=False, bootstrap=0)
    evaluate(model, dataset, paper_protocol(model.info, dataset), evaluators)
    return collect_results(evaluators)["mIoU"]


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["segmenter_micro_p8_linear", "setr_micro_p16_mla", "segformer_micro"])
def test_tiny_transformers_learn_the_synthetic_scenes(tmp_path, arch):
    recipe = RECIPES["scratch"]
    val = build_dataset("synthetic", "val")
    model = build_model(arch, 9, recipe)
    before = miou(model, val)
    train(model, build_dataset("synthetic", "train"), recipe, tmp_path, options=LoopOptions(workers=0))
    after = miou(model, val)
    print(f"{arch}: mIoU {before:.1f} -> {after:.1f} after {recipe.iters} iterations")
    assert before < 2 * CHANCE_MIOU
    assert after > 3 * CHANCE_MIOU
