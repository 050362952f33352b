"""Every registered model: output shape and stride, gradients reaching every trainable
parameter, auxiliary heads behind ``with_aux``, no NaN.

Models of every family are collected from the registry, so variants other modules
register are tested too. All of them run on the meta device (shapes and autograd
reachability without memory or compute); those small enough also run for real.
"""
from __future__ import annotations

import pytest
import torch

from segbench.models import ModelInfo, create_model, describe_models, list_models

NUM_CLASSES = 5
REAL_LIMIT = 25e6  # parameters; larger variants share their classes with a small variant that runs for real
ALL = list_models()
ROWS = {r["name"]: r for r in describe_models()}  # built on the meta device once


def _forward(model, x):
    """Logits and auxiliary logits (empty for models without auxiliary heads)."""
    if len(getattr(model, "aux_heads", ())):
        logits, aux = model(x, with_aux=True)
        assert len(aux) == len(model.aux_heads)
        return logits, aux
    return model(x), []


def _expected(info: ModelInfo, height: int, width: int) -> tuple[int, int]:
    return -(-height // info.output_stride), -(-width // info.output_stride)


@pytest.mark.parametrize("name", ALL)
def test_meta_forward_shape_and_gradients(name):
    with torch.device("meta"):
        model = create_model(name, num_classes=NUM_CLASSES)
        assert isinstance(model.info, ModelInfo) and model.info.name == name
        assert all(n.startswith(("encoder.", "decoder.", "aux_heads.")) for n, _ in model.named_parameters())
        model.train()
        x = torch.empty(2, 3, 64, 96)
        logits, aux = _forward(model, x)
        assert tuple(logits.shape) == (2, NUM_CLASSES, *_expected(model.info, 64, 96))
        for a in aux:
            assert a.shape == logits.shape
        (logits.sum() + sum(a.sum() for a in aux)).backward()
        unreached = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
        assert not unreached, f"parameters without gradient: {unreached[:8]}"
        out = model.eval()(x)
    assert isinstance(out, torch.Tensor), "forward(x) must return logits only (auxiliary heads are training-only)"


@pytest.mark.parametrize("name", [n for n in ALL if ROWS[n]["params"] < REAL_LIMIT])
def test_real_forward_backward_finite(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=NUM_CLASSES).train()
    x = torch.randn(2, 3, 64, 64)
    logits, aux = _forward(model, x)
    assert tuple(logits.shape) == (2, NUM_CLASSES, *_expected(model.info, 64, 64))
    assert torch.isfinite(logits).all()
    loss = torch.nn.functional.cross_entropy(logits, torch.randint(0, NUM_CLASSES, logits.shape[:1] + logits.shape[2:]))
    loss = loss + sum(0.4 * a.logsumexp(1).mean() for a in aux)
    loss.backward()
    bad = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not torch.isfinite(p.grad).all())]
    assert not bad, f"missing or non-finite gradients: {bad[:8]}"


@pytest.mark.parametrize("name", [n for n in ALL if n.startswith(("segmenter_micro", "setr_micro"))])
def test_any_input_size_is_padded_and_cropped(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=NUM_CLASSES).eval()
    x = torch.randn(1, 3, 50, 77)  # not a multiple of any patch size
    with torch.no_grad():
        logits = model(x)
        larger = model(torch.randn(1, 3, 160, 224))  # position embeddings resized past the crop
    assert tuple(logits.shape) == (1, NUM_CLASSES, 50, 77)
    assert tuple(larger.shape) == (1, NUM_CLASSES, 160, 224)
    assert torch.isfinite(logits).all() and torch.isfinite(larger).all()


def test_aux_heads_tap_the_papers_layers():
    from segbench.models.setr import MLAAuxHead, UpHead

    with torch.device("meta"):
        naive, pup, mla, base_mla = (create_model(n, 150) for n in ("setr_l16_naive", "setr_l16_pup", "setr_l16_mla",
                                                                    "setr_b16_mla"))
    assert naive.encoder.out_indices == (9, 14, 19, 23)  # Z10, Z15, Z20 (+ Z24 for the decoder)
    assert [h.in_index for h in naive.aux_heads] == [0, 1, 2] and naive.decoder.in_index == -1
    assert [pup.encoder.out_indices[h.in_index] for h in pup.aux_heads] == [9, 14, 19, 23]
    assert all(isinstance(h, UpHead) and h.scales == (4,) for h in pup.aux_heads)
    assert mla.encoder.out_indices == (5, 11, 17, 23)
    assert [h.in_index for h in mla.aux_heads] == [0, 1, 2, 3] and all(isinstance(h, MLAAuxHead) for h in mla.aux_heads)
    assert base_mla.encoder.out_indices == (2, 5, 8, 11)


def test_segmenter_settings():
    with torch.device("meta"):
        deit = create_model("segmenter_deit_b16_mask", 150)
        vit = create_model("segmenter_l16_mask_640", 150)
        city = create_model("segmenter_l16_mask1_768", 19)
    assert deit.encoder.pos_embed.shape[1] == 32 * 32 + 2 and deit.info.mean[0] == 123.68  # rounded as segm/data/base.py
    assert vit.info.crop_size == 640 and vit.info.mean == (127.5,) * 3 and len(vit.decoder.blocks) == 2
    assert len(city.decoder.blocks) == 1 and city.info.crop_size == 768
    assert vit.encoder.blocks[-1].drop_path1.drop_prob == pytest.approx(0.1)  # stochastic depth 0.1 (Sec. 4.3)


def test_describe_models_lists_every_variant():
    assert set(ROWS) == set(ALL)
    for r in ROWS.values():
        assert r["encoder_params"] + r["decoder_params"] + r["aux_params"] == r["params"], r["name"]
        assert r["crop_size"] > 0 and r["patch_size"] > 0 and r["normalization"] in ("imagenet", "vit (0.5, 0.5)")
    assert ROWS["setr_l16_pup"]["aux_params"] > 0 and ROWS["segmenter_b16_mask"]["aux_params"] == 0


def test_every_registered_family_declares_its_traits():
    # recipes, drop path, encoder init and mmseg converters come from the Family each family module
    # registers beside its builders (segbench.models.Family); a new family must declare one
    import torch

    from segbench.models import create_model, family_of, list_models

    families = set()
    for name in list_models():
        with torch.device("meta"):
            families.add(create_model(name, num_classes=3).info.family)
    assert families == {"segmenter", "setr", "segformer", "fcn", "deeplabv3plus"}
    assert all(family_of(f) is not None and family_of(f).name == f for f in families)
    assert family_of("custom") is None  # user models: a named recipe, no converter
    assert {f: family_of(f).recipe for f in families} == {"segmenter": "segmenter", "setr": "setr",
                                                          "segformer": "segformer", "fcn": "cnn",
                                                          "deeplabv3plus": "cnn"}
