"""The SegFormer paper's encoder x decoder combinations (segbench/models/composites.py):
built from the other families' modules, parameter counts against Tables 1d and 3
(segbench/reference/segformer.yaml; their GFLOPs: tests/test_profiling_papers.py).

Table 3's MiT + MLA decoder (4.2 M params, 87.7 decoder GFLOPs for B2 and B5) is not
reproduced: our MLA neck + head on the MiT pyramid has 5.09 M parameters and costs 34.3 G
(neck and head streams at each stage's resolution, classifier at 1/4). No variant we tried
gives both numbers: every map resized to 1/4 first costs 83.3 G with the same 5.09 M;
leaving out the 3x3 classifier gives 4.39 M. Those rows are expected failures (strict: a
future match fails the mark). Table 3's 3.7 M for ViT-L + MLA (SETR-MLA) is not reproduced
either: the MLA head has 2.46 M, with the neck (in SETR's encoder) 5.87 M.
"""
from __future__ import annotations

import pytest
import torch

from segbench.models import create_model, describe_models
from segbench.models.composites import LastStageMLPDecoder, MLADecoder
from segbench.models.segformer import AllMLPDecoder, MixVisionTransformer
from segbench.models.setr import MLAHead, MLANeck, SETRViT
from segbench.reference import reference_frame

REF = reference_frame()
COMPOSITES = ("mit_b2_mla", "mit_b5_mla", "vit_l16_mlp", "resnet50_mlp", "resnet101_mlp", "resnext101_mlp",
              "mit_b2_s4_mlp")


@pytest.fixture(scope="module")
def rows():
    return {r["name"]: r for r in describe_models()}


def paper(table: str, model: str, metric: str) -> float:
    return REF[(REF.table == table) & (REF.model == model) & (REF.metric == metric)
               & REF.paper.str.startswith("SegFormer")].value.item()


def matches_printed(measured: float, printed: float) -> bool:
    """Within 1 % of the paper, or equal at the one decimal it prints."""
    return abs(measured - printed) <= 0.01 * printed or round(measured, 1) == printed


def test_composites_reuse_the_families_modules():
    with torch.device("meta"):
        models = {name: create_model(name, num_classes=150) for name in COMPOSITES}
    for name in ("mit_b2_mla", "mit_b5_mla"):
        assert isinstance(models[name].encoder, MixVisionTransformer)
        assert isinstance(models[name].decoder, MLADecoder)
        assert isinstance(models[name].decoder.mla, MLANeck) and isinstance(models[name].decoder.head, MLAHead)
    vit = models["vit_l16_mlp"]
    assert isinstance(vit.encoder, SETRViT) and vit.encoder.out_indices == (5, 11, 17, 23)
    assert isinstance(vit.decoder, AllMLPDecoder) and vit.info.output_stride == 16
    for name in ("resnet50_mlp", "resnet101_mlp", "resnext101_mlp"):
        assert isinstance(models[name].decoder, AllMLPDecoder)
        assert models[name].encoder.feature_info.reduction() == [4, 8, 16, 32]  # not dilated
    assert isinstance(models["mit_b2_s4_mlp"].decoder, LastStageMLPDecoder)
    assert all(m.info.family == "segformer" and m.info.test_mode == "whole" for m in models.values())
    # official MiT names, so a SegFormer (mmseg / HF) encoder checkpoint loads into the MiT composites
    keys = set(models["mit_b2_mla"].state_dict())
    assert {"encoder.patch_embed1.proj.weight", "encoder.block3.5.attn.kv.weight", "encoder.norm4.bias"} <= keys


def test_mla_head_on_a_pyramid_classifies_at_the_first_map():
    torch.manual_seed(0)
    decoder = MLADecoder([8, 16, 24, 32], num_classes=3, channels=8, head_channels=4).eval()
    features = [torch.randn(1, c, 32 // 2 ** i, 48 // 2 ** i) for i, c in enumerate((8, 16, 24, 32))]
    out = decoder(features)
    assert out.shape == (1, 3, 32, 48) and torch.isfinite(out).all()


def test_last_stage_decoder_reads_only_the_last_map():
    torch.manual_seed(0)
    decoder = LastStageMLPDecoder(32, num_classes=3, dim=8).eval()
    features = [torch.randn(1, 4, 16, 16), torch.randn(1, 8, 8, 8), torch.randn(1, 16, 4, 4), torch.randn(1, 32, 2, 2)]
    out = decoder(features)
    features[0].normal_()  # only its size matters
    assert out.shape == (1, 3, 16, 16) and torch.equal(out, decoder(features))
    assert decoder(features[:1] + [torch.zeros(1, 8, 8, 8)] * 2 + features[3:]).equal(out)


@pytest.mark.parametrize("model", ["resnet50_mlp", "resnet101_mlp", "resnext101_mlp", "mit_b2_s4_mlp",
                                   "segformer_b2", "segformer_b3"])
def test_table1d_params(rows, model):
    assert matches_printed(rows[model]["params"] / 1e6, paper("1d", model, "params_m"))


def test_table1d_s4_has_no_fuse_layer(rows):
    # Table 1d's 24.7 M is the encoder + linear_c4 (512 -> 768) + linear_pred; a 768 x 768
    # fuse layer as in the four-stage decoder would make it 25.3 M
    assert not matches_printed((rows["mit_b2_s4_mlp"]["params"] + 768 * 768) / 1e6, paper("1d", "mit_b2_s4_mlp", "params_m"))


def test_table3_vit_l_mlp_decoder_params(rows):
    # C = 128 over four 1024-channel maps: the only width that prints as 0.6 M
    assert round(rows["vit_l16_mlp"]["decoder_params"] / 1e6, 1) == paper("3", "vit_l16_mlp", "decoder_params_m")
    with torch.device("meta"):
        wider = create_model("vit_l16_mlp", num_classes=150, decoder_dim=256)
    assert round(sum(p.numel() for p in wider.decoder.parameters()) / 1e6, 1) != 0.6


def test_table3_mlp_decoder_params(rows):
    assert matches_printed(rows["segformer_b2"]["decoder_params"] / 1e6, paper("3", "segformer_b2", "decoder_params_m"))


NOT_REPRODUCED = pytest.mark.xfail(strict=True, reason="Table 3's MLA decoder sizes are not reproduced (docstring)")


@NOT_REPRODUCED
@pytest.mark.parametrize("model", ["mit_b2_mla", "mit_b5_mla", "setr_l16_mla"])
def test_table3_mla_decoder_params(rows, model):
    assert matches_printed(rows[model]["decoder_params"] / 1e6, paper("3", model, "decoder_params_m"))


@NOT_REPRODUCED
@pytest.mark.parametrize("model", ["mit_b2_mla", "mit_b5_mla"])
def test_table3_mit_mla_decoder_gflops(model):
    from segbench.profiling import count_macs

    with torch.device("meta"):
        net = create_model(model, num_classes=150)
    rows = {row["name"]: row["macs"] for row in count_macs(net, 512, 512)[1]}
    assert matches_printed(rows["decoder"] / 1e9, paper("3", model, "decoder_gflops"))
