"""Segmenter's DeiT-Ti/16 and DeiT-S/16 (distilled) backbones of the official config.yml
(rstrudel/segmenter segm/config.yml: deit_{tiny,small}_distilled_patch16_224): built by
name, loaded from an official release, and a refusal that names only archs that exist."""
from __future__ import annotations

import pytest
import torch
import yaml

from checkpoint_writers import write_official_segmenter
from segbench.models import create_model, is_model
from segbench.models.checkpoints import CheckpointError, load_model

CONFIG_YML = {"deit_tiny_distilled_patch16_224": dict(d_model=192, n_heads=3, n_layers=12),
              "deit_small_distilled_patch16_224": dict(d_model=384, n_heads=6, n_layers=12)}


@pytest.mark.parametrize("arch, backbone", [("segmenter_deit_t16_mask", "deit_tiny_distilled_patch16_224"),
                                            ("segmenter_deit_s16_linear", "deit_small_distilled_patch16_224")])
def test_deit_variants_match_the_official_config(tmp_path, arch, backbone):
    with torch.device("meta"):
        model = create_model(arch, 150)
    encoder, expected = model.encoder, CONFIG_YML[backbone]
    assert encoder.cls_token.shape[-1] == expected["d_model"] and len(encoder.blocks) == expected["n_layers"]
    assert encoder.blocks[0].attn.num_heads == expected["n_heads"]
    assert encoder.dist_token is not None and encoder.pos_embed.shape[1] == (512 // 16) ** 2 + 2
    assert model.info.mean == (123.68, 116.28, 103.53)  # np.round(255 * 0.485, 2) ...: segm/data/base.py

    real = create_model(arch, 150, crop_size=32).eval()
    path = write_official_segmenter(tmp_path, real)
    loaded, report = load_model(arch, path, 150)
    assert report.complete and "encoder.head_dist.weight" in report.ignored
    x = torch.randn(1, 3, 32, 48)
    torch.testing.assert_close(loaded.eval()(x), real(x), rtol=0, atol=0)


def test_refusal_names_an_arch_that_exists(tmp_path):
    path = write_official_segmenter(tmp_path, create_model("segmenter_deit_t16_mask", 150, crop_size=32))
    with pytest.raises(CheckpointError, match="use arch: segmenter_deit_t16_mask") as error:
        load_model("segmenter_t16_mask", path, 150)
    assert is_model("segmenter_deit_t16_mask"), str(error.value)

    variant = yaml.unsafe_load((tmp_path / "variant.yml").read_text())
    variant["net_kwargs"]["decoder"]["n_layers"] = 3  # a decoder depth no segbench variant has
    (tmp_path / "variant.yml").write_text(yaml.dump(variant))
    with pytest.raises(CheckpointError, match="no segbench variant has this architecture"):
        load_model("segmenter_deit_t16_mask", path, 150)
