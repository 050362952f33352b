"""Training: the papers' recipes as data, and one plain loop.

A recipe fixes the optimiser, learning-rate schedule and batch/crop of a paper's
setting; a suite's ``train:`` block may override iterations, batch size, learning rate
and crop (e.g. for the CPU quickstart).
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from segbench.data.datasets import IGNORE_INDEX, SegDataset
from segbench.data.transforms import train_augment
from segbench.models.checkpoints import save_checkpoint


@dataclass(frozen=True)
class Recipe:
    name: str
    optimizer: str  # "sgd" | "adamw"
    lr: float
    iters: int
    batch_size: int
    crop_size: int
    weight_decay: float = 0.0
    momentum: float = 0.9
    poly_power: float = 0.9
    min_lr: float = 0.0
    warmup_iters: int = 0
    head_lr_mult: float = 1.0  # learning-rate multiplier of the decoder
    resize_ratio: tuple[float, float] = (0.5, 2.0)  # random-resize range of the augmentation
    photometric: bool = True  # photometric distortion in the augmentation


RECIPES = {
    # Segmenter Sec. 4.2: SGD, wd 0, poly 0.9, ADE20K lr 1e-3, 160k iterations, batch 8, crop 512.
    "segmenter": Recipe("segmenter", "sgd", lr=1e-3, iters=160_000, batch_size=8, crop_size=512, min_lr=1e-5),
    # Not a paper recipe: from-scratch training of tiny models on the synthetic scenes on a
    # CPU in about a minute. The papers fine-tune ImageNet-pretrained encoders with SGD
    # (or AdamW at 6e-5); from random weights a transformer needs AdamW with warmup, and
    # learns faster with milder augmentation.
    "scratch": Recipe("scratch", "adamw", lr=2e-3, iters=800, batch_size=8, crop_size=128, weight_decay=0.01,
                      poly_power=1.0, warmup_iters=100, resize_ratio=(0.75, 1.5), photometric=False),
}


def poly_lr(recipe: Recipe, iteration: int) -> float:
    """Learning rate factor at ``iteration`` (linear warmup, then poly decay to min_lr)."""
    progress = min(iteration / max(recipe.iters, 1), 1.0)
    lr = (recipe.lr - recipe.min_lr) * (1 - progress) ** recipe.poly_power + recipe.min_lr
    if iteration < recipe.warmup_iters:
        lr *= (iteration + 1) / recipe.warmup_iters
    return lr


def build_optimizer(model, recipe: Recipe) -> torch.optim.Optimizer:
    decoder = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("encoder.")]
    encoder = [p for n, p in model.named_parameters() if p.requires_grad and n.startswith("encoder.")]
    groups = [{"params": encoder, "lr_mult": 1.0}, {"params": decoder, "lr_mult": recipe.head_lr_mult}]
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=recipe.lr, weight_decay=recipe.weight_decay)
    raise ValueError(f"unknown optimizer {recipe.optimizer!r}")


def sample_batch(dataset: SegDataset, indices: np.ndarray, recipe: Recipe, rng: np.random.Generator,
                 mean, std) -> tuple[torch.Tensor, torch.Tensor]:
    crop = recipe.crop_size
    images, labels = [], []
    for index in indices:
        sample = dataset[int(index)]
        image, label = train_augment(sample.image, sample.label, crop, rng, dataset.test_scale,
                                     recipe.resize_ratio, recipe.photometric)
        images.append(image)
        labels.append(label)
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float()
    x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    return x, torch.from_numpy(np.stack(labels)).long()


def segmentation_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    if logits.shape[2:] != labels.shape[1:]:
        logits = F.interpolate(logits, size=labels.shape[1:], mode="bilinear", align_corners=False)
    return F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX)


def train(model, dataset: SegDataset, recipe: Recipe, out: Path, device="cpu", seed: int = 0,
          progress=None) -> Path:
    """Train ``model`` on ``dataset`` with ``recipe``; returns the final checkpoint path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model.to(device).train()
    optimizer = build_optimizer(model, recipe)
    log_path = out / "train_log.jsonl"
    with log_path.open("w") as log:
        for iteration in range(recipe.iters):
            lr = poly_lr(recipe, iteration)
            for group in optimizer.param_groups:
                group["lr"] = lr * group["lr_mult"]
            start = time.perf_counter()
            x, y = sample_batch(dataset, rng.integers(0, len(dataset), recipe.batch_size), recipe, rng,
                                model.info.mean, model.info.std)
            loss = segmentation_loss(model(x.to(device)), y.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            log.write(json.dumps({"iter": iteration + 1, "loss": loss.item(), "lr": lr,
                                  "seconds": time.perf_counter() - start}) + "\n")
            if progress is not None:
                progress(iteration + 1, loss.item())
    model.eval()
    return save_checkpoint(out / "final.pth", model, recipe=asdict(recipe), iteration=recipe.iters)


def resolve_recipe(family: str, recipe_name: str | None, **overrides) -> Recipe:
    name = recipe_name or family
    if name not in RECIPES:
        raise ValueError(f"no training recipe named {name!r}; available: {', '.join(sorted(RECIPES))}")
    return replace(RECIPES[name], **{k: v for k, v in overrides.items() if v is not None})
