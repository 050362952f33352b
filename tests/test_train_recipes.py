"""Every paper recipe against the sentence of the paper (or line of the official config)
it comes from, so a typo cannot silently change a recipe. The quotes are checked to be
verbatim in the papers' text where it is available (SEGBENCH_PAPERS, default
/work/shared/papers)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from segbench.engine.train import (RECIPES, build_model, build_optimizer, default_recipe_name, learning_rate,
                                   parameter_groups, resolve_recipe)
from segbench.models import create_model

PAPERS = Path(os.environ.get("SEGBENCH_PAPERS", "/work/shared/papers"))

# --- what the papers say (quoted verbatim) --------------------------------------------------
SEGMENTER_SGD = ("segmenter", "We use stochastic gradient descent (SGD) [42] as the optimizer with a base learning "
                              "rate γ_0 and set weight decay to 0.")
SEGMENTER_POLY = ("segmenter", "we adopt the \"poly\" learning rate decay $\\gamma = \\gamma_0 \\left(1 - "
                               "\\frac{N_{iter}}{N_{total}}\\right)^{0.9}$")
SEGMENTER_SCHEDULES = ("segmenter", "For ADE20K, we set the base learning rate γ_0 to 10^{-3} and train for 160K "
                                    "iterations with a batch size of 8. For Pascal Context, we set γ_0 to 10^{-3} and "
                                    "train for 80K iterations with a batch size of 16. For Cityscapes, we set γ_0 to "
                                    "10^{-2} and train for 80K iterations with a batch size of 8.")
SEGMENTER_CROPS = ("segmenter", "We randomly crop large images and pad small images to a fixed size of 512×512 for "
                                "ADE20K, 480×480 for Pascal-Context and 768×768 for Cityscapes. On ADE20K, we train our "
                                "largest model Seg-L-Mask/16 with a resolution of 640×640")
SEGMENTER_RESIZE = ("segmenter", "random resizing of the image to a ratio between 0.5 and 2.0 and random left-right "
                                 "flipping")
SEGMENTER_DROP_PATH = ("segmenter", "From now on, all the models will be trained with stochastic depth set to 0.1 "
                                    "and without dropout.")

SETR_AUGMENT = ("setr", "we apply random resize with ratio between 0.5 and 2, random cropping (768, 512 and 480 for "
                        "Cityscapes, ADE20K and Pascal Context respectively) and random horizontal flipping")
SETR_ITERS = ("setr", "We set the total iteration to 160,000 and 80,000 for the experiments on ADE20K and Pascal "
                      "Context. For Cityscapes, we set batch size to 8")
SETR_SGD = ("setr", "We adopt a polynomial learning rate decay schedule [58] and employ SGD as the optimizer. Momentum "
                    "and weight decay are set to 0.9 and 0 respectively for all the experiments on the three datasets. "
                    "We set initial learning rate 0.001 on ADE20K and Pascal Context, and 0.01 on Cityscapes.")
SETR_ADE_BATCH = ("setr", "SETR-MLA (16, 160k, SS)")  # Table 4: (batch, iterations, protocol)
SETR_PASCAL_BATCH = ("setr", "SETR-MLA (16, 80k, SS)")  # Table 5
SETR_AUX = ("setr", "Both auxiliary loss and main loss heads are applied concurrently.")
SETR_SYNC_BN = ("setr", "Synchronized BN is used in decoder and auxiliary loss heads.")
SETR_FCN_ADE = ("setr", "FCN (16, 160k, SS) [38]")  # Table 4: mmseg's FCN baseline
SETR_FCN_PASCAL = ("setr", "FCN (16, 80k, SS) [38]")  # Table 5
SETR_FCN_CITYSCAPES = ("setr", "FCN (80k, SS) [38]")  # Table 6

SEGFORMER_AUGMENT = ("segformer", "random cropping to  $512 \\times 512$ ,  $1024 \\times 1024$ ,  $512 \\times 512$  "
                                  "for ADE20K, Cityscapes and COCO-Stuff. Following [9] we set crop size to  "
                                  "$640 \\times 640$  on ADE20K for our largest model B5. We trained the models using "
                                  "AdamW optimizer for 160K iterations on ADE20K, Cityscapes, and 80K iterations on "
                                  "COCO-Stuff.")
SEGFORMER_BATCH_LR = ("segformer", "We used a batch size of 16 for ADE20K, COCO-Stuff and a batch size of 8 for "
                                   "Cityscapes. The learning rate was set to an initial value of 0.00006 and then used "
                                   "a “poly” LR schedule with factor 1.0 by default.")
SEGFORMER_NO_AUX = ("segformer", "we *did not* adopt widely-used tricks such as OHEM, auxiliary losses or class "
                                 "balance loss.")

# --- what only the official code says (config lines, not in the papers' text) ----------------
SEGMENTER_CODE = "rstrudel/segmenter train.py: optimizer_kwargs=dict(opt=optimizer, lr=lr, weight_decay=weight_decay, " \
                 "momentum=0.9, ..., min_lr=1e-5, poly_power=0.9); engine.py: torch.nn.CrossEntropyLoss(ignore_index)"
SETR_CODE = "fudan-zvg/SETR configs/SETR/*: optimizer = dict(lr=0.001, weight_decay=0.0, paramwise_cfg = " \
            "dict(custom_keys={'head': dict(lr_mult=10.)})); loss_weight=0.4 for every auxiliary_head; " \
            "backbone drop_rate=0. (drop_path_rate default 0.); schedule_*k.py: poly power=0.9, min_lr=1e-4"
SEGFORMER_CODE = "NVlabs/SegFormer local_configs/segformer/*: type='AdamW', lr=0.00006, betas=(0.9, 0.999), " \
                 "weight_decay=0.01, paramwise_cfg=dict(custom_keys={'pos_block': dict(decay_mult=0.), 'norm': " \
                 "dict(decay_mult=0.), 'head': dict(lr_mult=10.)}); lr_config = dict(policy='poly', warmup='linear', " \
                 "warmup_iters=1500, warmup_ratio=1e-6, power=1.0, min_lr=0.0); mit drop_path_rate=0.1"
MMSEG_CODE = "mmsegmentation 0.x: schedule_80k/160k.py optimizer = dict(type='SGD', lr=0.01, momentum=0.9, " \
             "weight_decay=0.0005), lr_config = dict(policy='poly', power=0.9, min_lr=1e-4); fcn_r50-d8_512x512_*_ade20k " \
             "4 GPUs x samples_per_gpu=4; *_512x1024_*_cityscapes 4 x 2; *_480x480_*_pascal_context lr=0.004, " \
             "weight_decay=0.0001, 4 x 4; auxiliary_head loss_weight=0.4"

SEGMENTER_COMMON = dict(optimizer="sgd", weight_decay=0.0, poly_power=0.9, drop_path=0.1, ratio_range=(0.5, 2.0),
                        momentum=0.9, min_lr=1e-5, warmup_iters=0, head_lr_mult=1.0, aux_weight=0.0,
                        loss_average="valid")
SETR_COMMON = dict(optimizer="sgd", momentum=0.9, weight_decay=0.0, ratio_range=(0.5, 2.0), sync_bn=True,
                   head_lr_mult=10.0, aux_weight=0.4, poly_power=0.9, min_lr=1e-4, drop_path=0.0, loss_average="all")
SEGFORMER_COMMON = dict(optimizer="adamw", lr=6e-5, poly_power=1.0, ratio_range=(0.5, 2.0), aux_weight=0.0,
                        betas=(0.9, 0.999), weight_decay=0.01, norm_decay_mult=0.0, head_lr_mult=10.0,
                        warmup_iters=1500, warmup_ratio=1e-6, min_lr=0.0, drop_path=0.1, loss_average="all")
CNN_COMMON = dict(optimizer="sgd", momentum=0.9, poly_power=0.9, min_lr=1e-4, aux_weight=0.4, sync_bn=True,
                  loss_average="all", ratio_range=(0.5, 2.0))

EXPECTED = {  # recipe -> (values, where they come from)
    "segmenter_ade20k": (dict(SEGMENTER_COMMON, lr=1e-3, iters=160_000, batch_size=8, crop_size=(512, 512)),
                         [SEGMENTER_SGD, SEGMENTER_POLY, SEGMENTER_SCHEDULES, SEGMENTER_CROPS, SEGMENTER_RESIZE,
                          SEGMENTER_DROP_PATH, SEGMENTER_CODE]),
    "segmenter_ade20k_640": (dict(SEGMENTER_COMMON, lr=1e-3, iters=160_000, batch_size=8, crop_size=(640, 640)),
                             [SEGMENTER_SCHEDULES, SEGMENTER_CROPS]),
    "segmenter_pascal_context": (dict(SEGMENTER_COMMON, lr=1e-3, iters=80_000, batch_size=16, crop_size=(480, 480)),
                                 [SEGMENTER_SCHEDULES, SEGMENTER_CROPS]),
    "segmenter_cityscapes": (dict(SEGMENTER_COMMON, lr=1e-2, iters=80_000, batch_size=8, crop_size=(768, 768)),
                             [SEGMENTER_SCHEDULES, SEGMENTER_CROPS]),
    "setr_ade20k": (dict(SETR_COMMON, lr=1e-3, iters=160_000, batch_size=16, crop_size=(512, 512)),
                    [SETR_AUGMENT, SETR_ITERS, SETR_SGD, SETR_ADE_BATCH, SETR_AUX, SETR_SYNC_BN, SETR_CODE]),
    "setr_ade20k_bs8": (dict(SETR_COMMON, lr=1e-3, iters=160_000, batch_size=8, crop_size=(512, 512)),
                        [SETR_ITERS, SETR_SGD, "fudan-zvg/SETR SETR_MLA_512x512_160k_ade20k_bs_8.py: samples_per_gpu=1"]),
    "setr_pascal_context": (dict(SETR_COMMON, lr=1e-3, iters=80_000, batch_size=16, crop_size=(480, 480)),
                            [SETR_AUGMENT, SETR_ITERS, SETR_SGD, SETR_PASCAL_BATCH]),
    "setr_cityscapes": (dict(SETR_COMMON, lr=1e-2, iters=80_000, batch_size=8, crop_size=(768, 768)),
                        [SETR_AUGMENT, SETR_ITERS, SETR_SGD]),
    "segformer_ade20k": (dict(SEGFORMER_COMMON, iters=160_000, batch_size=16, crop_size=(512, 512)),
                         [SEGFORMER_AUGMENT, SEGFORMER_BATCH_LR, SEGFORMER_NO_AUX, SEGFORMER_CODE]),
    "segformer_ade20k_640": (dict(SEGFORMER_COMMON, iters=160_000, batch_size=16, crop_size=(640, 640)),
                             [SEGFORMER_AUGMENT, SEGFORMER_BATCH_LR]),
    "segformer_cityscapes": (dict(SEGFORMER_COMMON, iters=160_000, batch_size=8, crop_size=(1024, 1024)),
                             [SEGFORMER_AUGMENT, SEGFORMER_BATCH_LR]),
    "segformer_coco_stuff": (dict(SEGFORMER_COMMON, iters=80_000, batch_size=16, crop_size=(512, 512)),
                             [SEGFORMER_AUGMENT, SEGFORMER_BATCH_LR]),
    "cnn_ade20k": (dict(CNN_COMMON, lr=0.01, weight_decay=5e-4, iters=160_000, batch_size=16, crop_size=(512, 512)),
                   [SETR_FCN_ADE, MMSEG_CODE]),
    "cnn_pascal_context": (dict(CNN_COMMON, lr=0.004, weight_decay=1e-4, iters=80_000, batch_size=16,
                                crop_size=(480, 480)), [SETR_FCN_PASCAL, MMSEG_CODE]),
    "cnn_cityscapes": (dict(CNN_COMMON, lr=0.01, weight_decay=5e-4, iters=80_000, batch_size=8, crop_size=(512, 1024)),
                       [SETR_FCN_CITYSCAPES, MMSEG_CODE]),
}


def test_every_paper_recipe_is_checked():
    assert set(EXPECTED) == set(RECIPES) - {"scratch"}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_recipe_matches_its_sources(name):
    values, sources = EXPECTED[name]
    recipe = RECIPES[name]
    for key, value in values.items():
        assert getattr(recipe, key) == value, f"{name}.{key} = {getattr(recipe, key)!r}, sources say {value!r}: {sources}"
    assert recipe.cat_max_ratio == 0.75 and recipe.photometric  # mmseg's pipeline, which all three papers use


def test_quotes_are_verbatim_in_the_papers():
    if not PAPERS.is_dir():
        pytest.skip(f"papers not available at {PAPERS}")
    texts = {paper: next(PAPERS.glob(f"{paper}_*.txt")).read_text() for paper in ("segmenter", "setr", "segformer")}
    quotes = {q for _, sources in EXPECTED.values() for q in sources if isinstance(q, tuple)}
    for paper, quote in quotes:
        assert quote in texts[paper], f"not in the {paper} paper: {quote!r}"


def test_default_recipe_follows_family_dataset_and_crop():
    assert default_recipe_name("segmenter", "ade20k", 512) == "segmenter_ade20k"
    assert default_recipe_name("segmenter", "ade20k", 640) == "segmenter_ade20k_640"
    assert default_recipe_name("segformer", "ade20k", 640) == "segformer_ade20k_640"
    assert default_recipe_name("setr", "pascal_context_59", 480) == "setr_pascal_context"
    assert default_recipe_name("deeplabv3plus", "cityscapes", 512) == "cnn_cityscapes"
    assert default_recipe_name("segformer", "synthetic", 128) == "scratch"
    with pytest.raises(ValueError, match="no paper recipe for segformer on pascal_context"):
        default_recipe_name("segformer", "pascal_context", 512)
    assert resolve_recipe(None, "setr", "cityscapes", 768, iters=40_000, crop_size=512).iters == 40_000
    assert resolve_recipe("setr_cityscapes", "setr", "cityscapes", 768, crop_size=512).crop_size == (512, 512)


def official_segmenter_lr(base, iteration, total, power=0.9, min_lr=1e-5):
    """rstrudel/segmenter optim/scheduler.py PolynomialLR without warmup."""
    return (base - min_lr) * (1 - iteration / total) ** power + min_lr


def mmcv_poly_with_linear_warmup(base, iteration, total, power, min_lr, warmup, ratio):
    """mmcv 1.x PolyLrUpdaterHook.get_lr and LrUpdaterHook.get_warmup_lr ('linear')."""
    regular = (base - min_lr) * (1 - iteration / total) ** power + min_lr
    if iteration >= warmup:
        return regular
    k = (1 - iteration / warmup) * (1 - ratio)
    return regular * (1 - k)


@pytest.mark.parametrize("iteration", [0, 1, 750, 1499, 1500, 80_000, 159_999])
def test_learning_rate_schedules(iteration):
    seg = RECIPES["segmenter_ade20k"]
    assert learning_rate(seg, seg.lr, iteration) == pytest.approx(official_segmenter_lr(1e-3, iteration, 160_000))
    former = RECIPES["segformer_ade20k"]
    for base in (6e-5, 6e-4):  # encoder, head (x10)
        assert learning_rate(former, base, iteration) == pytest.approx(
            mmcv_poly_with_linear_warmup(base, iteration, 160_000, 1.0, 0.0, 1500, 1e-6))
    setr = RECIPES["setr_ade20k"]
    assert learning_rate(setr, 1e-2, iteration) == pytest.approx(
        mmcv_poly_with_linear_warmup(1e-2, iteration, 160_000, 0.9, 1e-4, 0, 1e-6))


def test_segformer_parameter_groups_follow_the_official_paramwise_config():
    model = create_model("segformer_micro", num_classes=9)
    groups = {g["name"]: g for g in parameter_groups(model, RECIPES["segformer_ade20k"])}
    names = {id(p): n for n, p in model.named_parameters()}
    members = {k: {names[id(p)] for p in g["params"]} for k, g in groups.items()}
    assert (groups["head"]["lr_mult"], groups["head"]["weight_decay"]) == (10.0, 0.01)
    assert (groups["encoder_norm"]["lr_mult"], groups["encoder_norm"]["weight_decay"]) == (1.0, 0.0)
    assert (groups["encoder"]["lr_mult"], groups["encoder"]["weight_decay"]) == (1.0, 0.01)
    assert members["head"] == {n for n in names.values() if n.startswith("decoder.")}
    assert members["encoder_norm"] == {n for n in names.values() if n.startswith("encoder.") and "norm" in n}
    assert {"encoder.block1.0.attn.norm.weight", "encoder.patch_embed1.norm.bias", "encoder.norm4.weight"} \
        <= members["encoder_norm"]
    optimizer = build_optimizer(model, RECIPES["segformer_ade20k"])
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["betas"] == (0.9, 0.999)


def test_setr_heads_and_auxiliary_heads_get_ten_times_the_encoder_lr():
    model = create_model("setr_micro_p16_pup", num_classes=9)
    groups = {g["name"]: g for g in parameter_groups(model, RECIPES["setr_ade20k"])}
    assert set(groups) == {"encoder", "head"} and groups["head"]["lr_mult"] == 10.0
    head = {id(p) for p in groups["head"]["params"]}
    assert all((id(p) in head) == (not n.startswith("encoder.")) for n, p in model.named_parameters())
    assert any(n.startswith("aux_heads.") for n, p in model.named_parameters() if id(p) in head)


def test_models_are_built_for_the_recipe_crop_and_stochastic_depth():
    model = build_model("segmenter_micro_p8_linear", 9, resolve_recipe("segmenter_cityscapes", "", "", 0,
                                                                        crop_size=96))
    assert model.encoder.pos_embed.shape[1] == (96 // 8) ** 2 + 1
    rates = [block.drop_path1.drop_prob for block in model.encoder.blocks if hasattr(block.drop_path1, "drop_prob")]
    assert rates and max(rates) == pytest.approx(0.1)
    cnn = build_model("fcn_micro", 9, RECIPES["cnn_cityscapes"])  # no position embeddings, no drop path
    assert cnn.info.crop_size == 128
