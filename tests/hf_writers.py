"""Random-weight transformers segmentation models, written offline with save_pretrained,
in tiny configurations (a few thousand parameters) of four architectures."""
from __future__ import annotations

from pathlib import Path

import torch

MEAN, STD = [0.40, 0.45, 0.50], [0.20, 0.25, 0.30]  # not ImageNet's: shows they are read from the folder


def tiny_configs(num_labels: int) -> dict:
    from transformers import BeitConfig, ConvNextConfig, DPTConfig, SegformerConfig, SwinConfig, UperNetConfig

    vit = dict(hidden_size=16, num_hidden_layers=4, num_attention_heads=2, intermediate_size=32, image_size=32,
               patch_size=8, num_labels=num_labels, use_auxiliary_head=False)
    return {
        "segformer": SegformerConfig(num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[8, 16],
                                     patch_sizes=[7, 3], strides=[4, 2], num_attention_heads=[1, 2], mlp_ratios=[2, 2],
                                     decoder_hidden_size=16, num_labels=num_labels),
        "upernet_convnext": UperNetConfig(backbone_config=ConvNextConfig(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1],
                                                                out_features=["stage1", "stage2", "stage3", "stage4"]),
                                 hidden_size=16, auxiliary_in_channels=24, use_auxiliary_head=False,
                                 num_labels=num_labels),
        "upernet_swin": UperNetConfig(backbone_config=SwinConfig(embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1],
                                                                 window_size=2, image_size=32, patch_size=2,
                                                                 out_features=["stage1", "stage2", "stage3", "stage4"]),
                                      hidden_size=16, auxiliary_in_channels=32, use_auxiliary_head=False,
                                      num_labels=num_labels),
        "dpt": DPTConfig(**vit, backbone_out_indices=[0, 1, 2, 3], neck_hidden_sizes=[8, 8, 16, 16],
                         fusion_hidden_size=16, reassemble_factors=[4, 2, 1, 0.5], head_in_index=-1),
        "beit": BeitConfig(**vit, out_indices=[0, 1, 2, 3], use_relative_position_bias=True, pool_scales=[1, 2],
                           auxiliary_channels=8),
    }


def write_hf_model(folder: Path, config, seed: int = 0) -> Path:
    """save_pretrained of a random-weight model and an image processor with MEAN / STD."""
    from transformers import AutoModelForSemanticSegmentation, SegformerImageProcessor

    torch.manual_seed(seed)
    model = AutoModelForSemanticSegmentation.from_config(config).eval()
    model.save_pretrained(folder)
    SegformerImageProcessor(image_mean=MEAN, image_std=STD, do_resize=False).save_pretrained(folder)
    return folder
