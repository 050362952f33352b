"""SegFormer: shapes, gradients, official module names, and parameter counts against the
paper's Table 1a / 1b (reference data in segbench/reference/segformer.yaml)."""
import pytest
import torch

from segbench.models import create_model, describe_models
from segbench.models.segformer import MIT_DIMS, AllMLPDecoder, segformer_from_hf_config
from segbench.reference import lookup

SIZES = ("b0", "b1", "b2", "b3", "b4", "b5")


@pytest.fixture(scope="module")
def rows():
    """segbench's model table (parameters counted on the meta device, 150 classes)."""
    return {row["name"]: row for row in describe_models("segformer*")}


def matches_printed(measured: float, printed: float) -> bool:
    """Within 1 % of the paper, or equal to it at the one decimal the paper prints
    (0.4 M stands for anything in [0.35, 0.45))."""
    return abs(measured - printed) <= 0.01 * printed or round(measured, 1) == printed


@pytest.mark.parametrize("name,size", [("segformer_micro", 64), ("segformer_b0", 64), ("segformer_b0", 70)])
def test_forward_shape_stride_and_gradients(name, size):
    torch.manual_seed(0)
    model = create_model(name, num_classes=5, drop_path=0.0).train()
    assert model.info.output_stride == 4 and model.info.family == "segformer"
    x = torch.randn(2, 3, size, size + 24)
    logits = model(x)
    # stride-4 overlapping patch embedding (kernel 7, padding 3): ceil(side / 4)
    assert logits.shape == (2, 5, -(-size // 4), -(-(size + 24) // 4))
    assert torch.isfinite(logits).all()
    logits.logsumexp(1).mean().backward()
    for param_name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, param_name


def test_official_module_names():
    # The names an NVlabs/mmseg checkpoint holds, after backbone. -> encoder., decode_head. -> decoder.
    with torch.device("meta"):
        keys = set(create_model("segformer_b0", num_classes=150).state_dict())
    for key in ["encoder.patch_embed1.proj.weight", "encoder.patch_embed4.norm.bias",
                "encoder.block1.0.attn.q.weight", "encoder.block1.1.attn.kv.bias", "encoder.block1.0.attn.sr.weight",
                "encoder.block3.1.attn.norm.weight", "encoder.block2.0.mlp.dwconv.dwconv.weight",
                "encoder.block4.1.mlp.fc2.bias", "encoder.norm4.weight", "decoder.linear_c4.proj.weight",
                "decoder.linear_fuse.conv.weight", "decoder.linear_fuse.bn.running_var", "decoder.linear_pred.bias"]:
        assert key in keys, key
    assert not any(".attn.sr." in k for k in keys if k.startswith("encoder.block4."))  # sr_ratio 1 in stage 4
    assert "decoder.linear_fuse.conv.bias" not in keys  # mmcv ConvModule: no bias before BN


def test_registry_and_info_on_meta_device(rows):
    assert {f"segformer_{s}" for s in SIZES} | {"segformer_b5_640", "segformer_micro"} <= set(rows)
    assert rows["segformer_b5_640"]["crop_size"] == 640 and rows["segformer_b0"]["crop_size"] == 512
    assert all(r["test_mode"] == "whole" and r["normalization"] == "imagenet" for r in rows.values())


@pytest.mark.parametrize("size", SIZES)
def test_params_match_table_1a(rows, size):
    encoder, decoder = rows[f"segformer_{size}"]["encoder_params"] / 1e6, rows[f"segformer_{size}"]["decoder_params"] / 1e6
    assert matches_printed(decoder, lookup(f"segformer_{size}", "decoder_params_m", table="1a"))
    paper_encoder = lookup(f"segformer_{size}", "encoder_params_m", table="1a")
    if size == "b0":
        # Table 1a prints 3.4 M, but the official mit_b0 (and HF's, which our weights load
        # into strictly: test_hf_parity.py) has 3.32 M. The paper's 3.4 is Table 2's rounded
        # total 3.8 minus the rounded decoder 0.4; check the count against that total instead.
        assert round(encoder, 2) == 3.32
        assert round(encoder + decoder, 1) == lookup("segformer_b0", "params_m", table="2")
    else:
        assert matches_printed(encoder, paper_encoder)


@pytest.mark.parametrize("size", ["b4", "b5"])
def test_total_params_match_table_2(rows, size):
    assert matches_printed(rows[f"segformer_{size}"]["params"] / 1e6, lookup(f"segformer_{size}", "params_m", table="2"))


@pytest.mark.parametrize("width", [256, 512, 768, 1024, 2048])
def test_decoder_width_matches_table_1b(rows, width):
    with torch.device("meta"):
        decoder = AllMLPDecoder(MIT_DIMS["b2"], num_classes=150, dim=width)
    total = rows["segformer_b2"]["encoder_params"] + sum(p.numel() for p in decoder.parameters())
    assert matches_printed(total / 1e6, lookup(f"segformer_b2 (C={width})", "params_m", table="1b"))


def test_decoder_defaults_to_paper_width(rows):
    # C = 256 for the real-time B0 / B1, 768 for the others (Sec. 4.2)
    assert [rows[f"segformer_{s}"]["decoder"] for s in SIZES] == ["all_mlp_c256"] * 2 + ["all_mlp_c768"] * 4


def test_all_mlp_decoder_takes_any_encoder_maps():
    # SegFormer Table 3 pairs the decoder with ViT-L: four maps at one resolution.
    decoder = AllMLPDecoder([12, 12, 12, 12], num_classes=3, dim=8).eval()
    maps = [torch.randn(1, 12, 6, 5) for _ in range(4)]
    assert decoder(maps).shape == (1, 3, 6, 5)
    # maps at different strides are upsampled to the first (shallowest) one
    decoder = AllMLPDecoder([4, 6], num_classes=3, dim=8).eval()
    assert decoder([torch.randn(1, 4, 8, 8), torch.randn(1, 6, 2, 2)]).shape == (1, 3, 8, 8)


def test_from_hf_config_picks_the_variant():
    b2 = {"hidden_sizes": [64, 128, 320, 512], "depths": [3, 4, 6, 3], "decoder_hidden_size": 768,
          "id2label": {str(i): f"c{i}" for i in range(19)}}
    with torch.device("meta"):
        model = segformer_from_hf_config(b2)
    assert model.info.name == "segformer_b2" and model.info.num_classes == 19
    assert model.decoder.linear_pred.out_channels == 19
    with pytest.raises(ValueError, match="patch_sizes"):
        segformer_from_hf_config(b2 | {"patch_sizes": [4, 2, 2, 2]})
