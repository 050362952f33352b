"""Training: the papers' recipes as data, and one plain loop.

A :class:`Recipe` holds what a paper fixes (optimiser, learning-rate schedule, batch, crop,
loss weights, augmentation); ``RECIPES`` names them after paper and dataset, each citing
its source, and tests/test_train_recipes.py checks every number against the papers' text.
A suite picks a recipe (``train: {recipe: ...}``) or gets the default for the model family
and dataset (:func:`default_recipe_name`); iterations, batch, learning rate and crop can be
overridden (:func:`resolve_recipe`).

The loop (:func:`train`) is how the papers' mmseg / official code trains, written out:

- the global batch is ``recipe.batch_size`` whatever the number of processes (``torchrun``:
  each rank takes batch / world size) and gradient-accumulation steps; batches and their
  augmentation are a pure function of (seed, iteration, slot) (segbench.data.loader) and
  dropout / drop-path draw from a generator seeded with (seed, iteration, rank), so a run
  resumed from a checkpoint continues exactly as if it had never stopped;
- the loss is normalised over the global batch (all pixels, or the labelled ones: see
  ``Recipe.loss_average``), so it does not depend on how the batch is split either;
- mixed precision (``amp="bf16" | "fp16"``, fp16 with a gradient scaler), synchronised batch
  norms across GPUs where the papers use them, periodic evaluation with the paper's test
  protocol, a training-state checkpoint every N iterations (written atomically), a JSONL
  log (one line per iteration, one per evaluation).
"""
from __future__ import annotations

import json
import math
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from segbench import dist
from segbench.data.datasets import IGNORE_INDEX, SegDataset
from segbench.errors import SegbenchError
from segbench.data.loader import IterationBatches, loader
from segbench.devices import AMP_DTYPES
from segbench.models import create_model, family_of
from segbench.models.checkpoints import read_file, save_checkpoint


class TrainError(SegbenchError, ValueError):
    """A training output folder that cannot be used for this run (a file, another run's)."""


@dataclass(frozen=True)
class Recipe:
    """One paper's training setting. Learning rates follow mmcv's schedule (Segmenter's
    official one is the same): ``(base - min_lr) * (1 - t / iters) ** poly_power + min_lr``
    for iteration t = 0 .. iters - 1, times a linear warmup over the first ``warmup_iters``."""

    name: str
    source: str  # where the numbers come from
    optimizer: str  # "sgd" | "adamw"
    lr: float
    iters: int
    batch_size: int  # global: over all processes and accumulation steps
    crop_size: tuple[int, int]  # (height, width)
    weight_decay: float = 0.0
    momentum: float = 0.9  # SGD
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW
    poly_power: float = 0.9
    min_lr: float = 0.0  # absolute, for every parameter group (mmcv)
    warmup_iters: int = 0
    warmup_ratio: float = 1e-6  # mmcv's linear warmup starts at lr * warmup_ratio
    head_lr_mult: float = 1.0  # parameters outside ``encoder.``: decoder, auxiliary heads (mmcv custom key "head")
    norm_decay_mult: float = 1.0  # weight decay of encoder parameters named "*norm*" (mmcv custom key "norm")
    aux_weight: float = 0.0  # loss weight of each auxiliary head, for models that have them
    loss_average: str = "all"  # "all": over every pixel, ignored ones adding 0 (mmseg's CrossEntropyLoss);
    #                            "valid": over labelled pixels (torch's CrossEntropyLoss, Segmenter's code)
    drop_path: float | None = None  # stochastic depth of transformer encoders; None: the model's default
    sync_bn: bool = False  # synchronise batch norms across GPUs (the mmseg-based papers' SyncBN)
    ratio_range: tuple[float, float] = (0.5, 2.0)  # random resize, relative to the dataset's training scale
    cat_max_ratio: float = 0.75  # random crop: redraw while one class covers this much
    photometric: bool = True  # photometric distortion


SEGMENTER = "Segmenter Sec. 4.2; rstrudel/segmenter train.py (momentum 0.9, min lr 1e-5)"
SETR = "SETR Sec. 4.1, Tables 4-6; fudan-zvg/SETR configs (head lr x10, poly min lr 1e-4)"
SEGFORMER = "SegFormer Sec. 4.1; NVlabs/SegFormer local_configs (wd 0.01, head lr x10, norm decay 0, warmup 1500)"
MMSEG_CNN = "mmsegmentation 0.x FCN / DeepLabv3+ configs (4 GPUs x 4 or x 2 images), schedule_*k.py"

_segmenter = dict(optimizer="sgd", min_lr=1e-5, drop_path=0.1, loss_average="valid", source=SEGMENTER)
_setr = dict(optimizer="sgd", min_lr=1e-4, head_lr_mult=10.0, aux_weight=0.4, drop_path=0.0, sync_bn=True, source=SETR)
_segformer = dict(optimizer="adamw", lr=6e-5, weight_decay=0.01, head_lr_mult=10.0, norm_decay_mult=0.0,
                  warmup_iters=1500, poly_power=1.0, drop_path=0.1, sync_bn=True, source=SEGFORMER)
# mmseg's CNN configs add an auxiliary FCN head (loss weight 0.4) that segbench's FCN / DeepLabv3+
# do not build: for them aux_weight has nothing to weigh, and the loss is the main head's alone.
_cnn = dict(optimizer="sgd", lr=0.01, weight_decay=5e-4, min_lr=1e-4, aux_weight=0.4, sync_bn=True, source=MMSEG_CNN)


def _square(side: int) -> tuple[int, int]:
    return (side, side)


RECIPES: dict[str, Recipe] = {r.name: r for r in [
    Recipe("segmenter_ade20k", lr=1e-3, iters=160_000, batch_size=8, crop_size=_square(512), **_segmenter),
    Recipe("segmenter_ade20k_640", lr=1e-3, iters=160_000, batch_size=8, crop_size=_square(640), **_segmenter),
    Recipe("segmenter_pascal_context", lr=1e-3, iters=80_000, batch_size=16, crop_size=_square(480), **_segmenter),
    Recipe("segmenter_cityscapes", lr=1e-2, iters=80_000, batch_size=8, crop_size=_square(768), **_segmenter),
    # Table 4 ("16, 160k") and the official bs_16 configs; SETR-MLA also has a batch-8 run (SETR_MLA_..._bs_8).
    Recipe("setr_ade20k", lr=1e-3, iters=160_000, batch_size=16, crop_size=_square(512), **_setr),
    Recipe("setr_ade20k_bs8", lr=1e-3, iters=160_000, batch_size=8, crop_size=_square(512), **_setr),
    Recipe("setr_pascal_context", lr=1e-3, iters=80_000, batch_size=16, crop_size=_square(480), **_setr),
    # Cityscapes: batch 8; Tables 2 and 6 report 40k and 80k schedules (80k by default).
    Recipe("setr_cityscapes", lr=1e-2, iters=80_000, batch_size=8, crop_size=_square(768), **_setr),
    Recipe("segformer_ade20k", iters=160_000, batch_size=16, crop_size=_square(512), **_segformer),
    Recipe("segformer_ade20k_640", iters=160_000, batch_size=16, crop_size=_square(640), **_segformer),
    Recipe("segformer_cityscapes", iters=160_000, batch_size=8, crop_size=_square(1024), **_segformer),
    Recipe("segformer_coco_stuff", iters=80_000, batch_size=16, crop_size=_square(512), **_segformer),
    # SETR Tables 4-6 compare with mmseg's FCN at these schedules: ADE20K (16, 160k), Pascal
    # Context (16, 80k, lr 0.004, wd 1e-4), Cityscapes (batch 8, 512x1024 crops, 40k / 80k).
    Recipe("cnn_ade20k", iters=160_000, batch_size=16, crop_size=_square(512), **_cnn),
    Recipe("cnn_pascal_context", iters=80_000, batch_size=16, crop_size=_square(480),
           **{**_cnn, "lr": 0.004, "weight_decay": 1e-4}),
    Recipe("cnn_cityscapes", iters=80_000, batch_size=8, crop_size=(512, 1024), **_cnn),
    # Not a paper recipe: the quickstart's tiny models, trained from random weights on the
    # synthetic scenes on a CPU in about a minute each, the same recipe for every family. The
    # papers fine-tune ImageNet-pretrained encoders for 80-160k iterations; here, in 800, AdamW
    # at 2e-3 after a 100-iteration warmup did best over the families (1e-3 suited the plain
    # ViT better, SegFormer and FCN worse), without scale jitter (the synthetic scenes all
    # have one scale; jitter 0.75-1.5 cost 3-8 mIoU) or photometric distortion (a few more),
    # and without drop path (0.1 gave the plain ViT 2 points, cost SegFormer 6): mIoU on the
    # synthetic val split after 800 iterations, from the tuning runs when the recipe was written.
    Recipe("scratch", "segbench (CPU quickstart)", "adamw", lr=2e-3, iters=800, batch_size=8, crop_size=_square(128),
           weight_decay=0.01, poly_power=1.0, warmup_iters=100, aux_weight=0.4, drop_path=0.0,
           ratio_range=(1.0, 1.0), photometric=False),
]}



def default_recipe_name(family: str, dataset_kind: str, model_crop: int) -> str:
    """The paper's recipe for a model family on a dataset kind (the synthetic set: ``scratch``).
    ADE20K models built for 640 crops (Seg-L-Mask/16, SegFormer-B5) get the 640 recipe."""
    if dataset_kind == "synthetic":
        return "scratch"
    known = family_of(family)
    name = f"{known.recipe if known else family}_{dataset_kind.removesuffix('_59')}"
    if model_crop == 640 and f"{name}_640" in RECIPES:
        name += "_640"
    if name not in RECIPES:
        raise ValueError(f"no paper recipe for {family} on {dataset_kind}; choose one with `recipe:` "
                         f"({', '.join(RECIPES)})")
    return name


def resolve_recipe(name: str | None, family: str, dataset_kind: str, model_crop: int, **overrides) -> Recipe:
    """The named (or default) recipe with the overrides that are not None; an int crop is square."""
    name = name or default_recipe_name(family, dataset_kind, model_crop)
    if name not in RECIPES:
        raise ValueError(f"no training recipe named {name!r}; available: {', '.join(RECIPES)}")
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if isinstance(overrides.get("crop_size"), int):
        overrides["crop_size"] = _square(overrides["crop_size"])
    recipe = RECIPES[name]
    iters = overrides.get("iters", recipe.iters)
    if iters < 1:
        raise ValueError(f"iters must be at least 1, got {iters} (0 would write untrained weights as a result)")
    if iters <= recipe.warmup_iters:
        # A run shorter than the warm-up would never reach the base learning rate: the warm-up
        # keeps its share of the schedule instead (recorded in the recipe, hence in the job id).
        overrides["warmup_iters"] = recipe.warmup_iters * iters // recipe.iters
    return replace(recipe, **overrides)


def recipe_notes(recipe: Recipe) -> list[str]:
    """What the record should say about a recipe changed beyond its overrides (a scaled warm-up)."""
    named = RECIPES.get(recipe.name)
    if named is None or recipe.warmup_iters == named.warmup_iters:
        return []
    return [f"warm-up scaled to {recipe.warmup_iters} of {recipe.iters} iterations: {recipe.name}'s "
            f"{named.warmup_iters} of {named.iters} would outlast the run"]


def suite_recipe(spec, dataset_kind: str, num_classes: int | None = None) -> Recipe:
    """The recipe of a suite's model entry (a ``suite.ModelSpec`` with a ``train:`` block);
    ``num_classes``: the dataset's (a folder dataset's classes are in its classes file)."""
    from segbench.data.datasets import DATASETS

    num_classes = spec.num_classes or num_classes or len(DATASETS[dataset_kind].classes)
    with torch.device("meta"):
        info = create_model(spec.arch, num_classes=num_classes).info
    t = spec.train
    return resolve_recipe(t.recipe, info.family, dataset_kind, info.crop_size, iters=t.iters,
                          batch_size=t.batch_size, lr=t.lr, crop_size=t.crop_size)


def learning_rate(recipe: Recipe, base: float, iteration: int) -> float:
    """Poly decay to ``min_lr`` with mmcv's linear warmup factor ``1 - (1 - t / W)(1 - ratio)``."""
    lr = (base - recipe.min_lr) * (1 - iteration / recipe.iters) ** recipe.poly_power + recipe.min_lr
    if iteration < recipe.warmup_iters:
        lr *= 1 - (1 - iteration / recipe.warmup_iters) * (1 - recipe.warmup_ratio)
    return lr


def parameter_groups(model: nn.Module, recipe: Recipe) -> list[dict]:
    """mmcv's ``paramwise_cfg`` as the official configs use it: key "head" (every parameter
    outside ``encoder.``) -> lr x ``head_lr_mult``; else key "norm" -> weight decay x
    ``norm_decay_mult``. Head parameters never get the norm rule ("head" matches first)."""
    groups: dict[tuple[str, float, float], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if not name.startswith("encoder."):
            key = ("head", recipe.head_lr_mult, 1.0)
        elif "norm" in name and recipe.norm_decay_mult != 1.0:
            key = ("encoder_norm", 1.0, recipe.norm_decay_mult)
        else:
            key = ("encoder", 1.0, 1.0)
        groups.setdefault(key, []).append(p)
    return [{"name": name, "params": params, "lr_mult": lr_mult, "weight_decay": recipe.weight_decay * decay_mult}
            for (name, lr_mult, decay_mult), params in groups.items()]


def build_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    groups = parameter_groups(model, recipe)
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=recipe.lr, momentum=recipe.momentum)
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=recipe.lr, betas=recipe.betas)
    raise ValueError(f"recipe {recipe.name}: unknown optimizer {recipe.optimizer!r} (sgd or adamw)")


def build_model(arch: str, num_classes: int, recipe: Recipe, seed: int = 0) -> nn.Module:
    """The model as its paper trains it: position embeddings built for the training crop
    (Segmenter, SETR), the recipe's stochastic depth; weights drawn from ``seed``."""
    with torch.device("meta"):
        probe = create_model(arch, num_classes=num_classes)
    kwargs = {}
    family = family_of(probe.info.family)
    if recipe.drop_path is not None and family is not None and family.drop_path:
        kwargs["drop_path"] = recipe.drop_path
    height, width = recipe.crop_size
    if height == width != probe.info.crop_size and hasattr(getattr(probe, "encoder", None), "pos_embed"):
        kwargs["crop_size"] = height
    torch.manual_seed(seed)
    return create_model(arch, num_classes=num_classes, **kwargs)


def recipe_from_dict(data: dict) -> Recipe:
    """A recipe from its ``asdict`` form (as records and checkpoints store it)."""
    return Recipe(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def initialise_encoder(model: nn.Module, path: str | Path) -> list[str]:
    """Copy ImageNet classification weights into a ViT encoder (Segmenter, SETR), as the papers
    fine-tune (segbench.models.checkpoints.init_encoder_from_imagenet); returns notes for the record."""
    from segbench.models.checkpoints import init_encoder_from_imagenet

    family = family_of(model.info.family)
    if family is None or not family.imagenet_vit_encoder:
        raise TrainError(f"encoder_init: ImageNet weights load into ViT encoders (Segmenter, SETR); "
                         f"not supported for {model.info.family} yet")
    report = init_encoder_from_imagenet(model, path)
    return [f"encoder initialised from {path}: {report.summary()}", *report.notes]


def pixel_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy summed over labelled pixels, logits resized to the labels (bilinear)."""
    logits = logits.float()
    if logits.shape[2:] != labels.shape[1:]:
        logits = F.interpolate(logits, size=labels.shape[1:], mode="bilinear", align_corners=False)
    return F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="sum")


def has_aux_heads(model: nn.Module) -> bool:
    return len(getattr(model, "aux_heads", ())) > 0


@dataclass(frozen=True)
class LoopOptions:
    """How to run a recipe. ``seed``, ``accumulate`` and ``amp`` change the result; the
    others only change speed and what is written along the way."""

    seed: int = 0
    accumulate: int = 1  # gradient-accumulation steps per iteration
    amp: str | None = None  # "bf16" | "fp16": mixed precision (autocast; fp16 with a gradient scaler)
    workers: int = 0  # data-loading processes (0: in the training process)
    checkpoint_every: int = 1000  # iterations between training-state checkpoints (last.pth)
    eval_every: int = 0  # iterations between evaluations on ``eval_dataset`` (0: none)
    eval_max_images: int | None = None
    resume: bool = True  # continue from ``out/last.pth`` if there is one


@dataclass
class TrainSummary:
    checkpoint: Path  # final.pth: weights + ModelInfo (+ recipe, iteration)
    log: Path  # train_log.jsonl
    resumed_from: int  # iteration this session started at (0: a fresh run)
    seconds: float = 0.0  # this session
    data_seconds: float = 0.0  # time the loop waited for batches
    evaluation: dict | None = None  # the last periodic evaluation's metrics
    notes: list[str] = field(default_factory=list)


STATE_FILE, FINAL_FILE, LOG_FILE = "last.pth", "final.pth", "train_log.jsonl"


def iteration_seed(seed: int, iteration: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, 2, iteration, rank]).generate_state(1)[0])


def train(model: nn.Module, dataset: SegDataset, recipe: Recipe, out: str | Path, device="cpu",
          options: LoopOptions = LoopOptions(), eval_dataset: SegDataset | None = None, progress=None) -> TrainSummary:
    """Train ``model`` (built by :func:`build_model`) on ``dataset`` with ``recipe``; files go to ``out``.
    ``progress(iteration, loss)`` is called after each iteration (on the main process)."""
    out, device = Path(out), torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())  # torchrun: the one init_from_env chose
    world, rank = dist.world_size(), dist.rank()
    micro, rest = divmod(recipe.batch_size, world * options.accumulate)
    if rest or not micro:
        raise TrainError(f"batch size {recipe.batch_size} does not split into {world} process(es) x "
                         f"{options.accumulate} accumulation step(s); choose a multiple of "
                         f"{world * options.accumulate}")
    if options.amp not in (None, *AMP_DTYPES):
        raise ValueError(f"amp must be bf16 or fp16, got {options.amp!r}")
    if out.exists() and not out.is_dir():
        raise TrainError(f"{out}: the training output must be a folder (for last.pth, final.pth, "
                         "train_log.jsonl), and this is a file; choose another --out")
    summary = TrainSummary(out / FINAL_FILE, out / LOG_FILE, resumed_from=0)
    if options.resume and _finished(out / FINAL_FILE, recipe, options):
        summary.resumed_from = recipe.iters
        return summary
    out.mkdir(parents=True, exist_ok=True)
    model.to(device).train()
    if recipe.sync_bn and dist.is_distributed():
        if device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        else:
            summary.notes.append("batch norms not synchronised: torch's SyncBatchNorm runs on GPUs only")
    aux = recipe.aux_weight > 0 and has_aux_heads(model)
    if recipe.source == MMSEG_CNN and not aux:
        summary.notes.append(f"mmseg trains {model.info.family} with an auxiliary FCN head (loss weight "
                             f"{recipe.aux_weight}); segbench's {model.info.name} has none: main loss only")
    optimizer = build_optimizer(model, recipe)
    scaler = torch.amp.GradScaler(device.type, enabled=options.amp == "fp16")
    if options.resume and (out / STATE_FILE).is_file():
        summary.resumed_from = _restore(out / STATE_FILE, model, optimizer, scaler, recipe, options)
    net = model
    if dist.is_distributed():  # unused auxiliary heads (aux_weight 0) must not stall the gradient all-reduce
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=has_aux_heads(model) and not aux)
    batches = IterationBatches(dataset, recipe.batch_size, recipe.crop_size, model.info.mean, model.info.std,
                               options.seed, first_slot=rank * micro * options.accumulate,
                               micro_batches=options.accumulate, micro_batch_size=micro,
                               ratio_range=recipe.ratio_range, cat_max_ratio=recipe.cat_max_ratio,
                               photometric=recipe.photometric)
    data = loader(batches, summary.resumed_from, recipe.iters, options.workers, pin_memory=device.type == "cuda")
    log = _Log(out / LOG_FILE, summary.resumed_from, summary.notes) if dist.is_main() else None
    session_start = waited = time.perf_counter()
    done = summary.resumed_from
    try:
        for iteration, (images, labels) in zip(range(summary.resumed_from, recipe.iters), data):
            step_start = time.perf_counter()
            summary.data_seconds += step_start - waited
            torch.manual_seed(iteration_seed(options.seed, iteration, rank))
            loss = train_step(net, optimizer, scaler, images.to(device), labels.to(device), recipe, iteration,
                              aux, options.amp)
            done = iteration + 1
            if log:
                log.write({"iter": done, "loss": loss, "lr": learning_rate(recipe, recipe.lr, iteration),
                           "seconds": time.perf_counter() - step_start, "data_seconds": step_start - waited})
            if options.eval_every and eval_dataset is not None and (done % options.eval_every == 0 or done == recipe.iters):
                summary.evaluation = _evaluate(model, eval_dataset, device, options.eval_max_images)
                if log:
                    log.write({"iter": done, "eval": summary.evaluation})
            if options.checkpoint_every and done % options.checkpoint_every == 0 and done < recipe.iters:
                if dist.is_main():
                    save_checkpoint(out / STATE_FILE, model, **_state(optimizer, scaler, done, recipe, options))
                dist.barrier()
            if progress is not None and dist.is_main():
                progress(done, loss)
            waited = time.perf_counter()
    except KeyboardInterrupt:
        # Ctrl-C: keep the iterations done since the last checkpoint (a re-run resumes here).
        if dist.is_main() and done > summary.resumed_from:
            save_checkpoint(out / STATE_FILE, model, **_state(optimizer, scaler, done, recipe, options))
        raise
    finally:
        if log:
            log.close()
    model.eval()
    if dist.is_main():
        save_checkpoint(out / FINAL_FILE, model, **_state(None, None, recipe.iters, recipe, options))
    dist.barrier()
    summary.seconds = time.perf_counter() - session_start
    return summary


def train_step(net: nn.Module, optimizer, scaler, images: torch.Tensor, labels: torch.Tensor, recipe: Recipe,
               iteration: int, aux: bool, amp: str | None = None) -> float:
    """One iteration on this process's share of the global batch, ``(micro_batches, micro_batch_size, ...)``:
    forward / backward per micro-batch, one optimiser step. Returns the global batch's loss.

    Each micro-batch's summed pixel losses are divided by the global batch's pixel count
    (all pixels, or the labelled ones: one all-reduce), so gradients and loss equal the
    one-process, one-step ones whatever the split."""
    world = dist.world_size()
    for group in optimizer.param_groups:
        group["lr"] = learning_rate(recipe, recipe.lr * group["lr_mult"], iteration)
    if recipe.loss_average == "valid":
        normaliser = float(dist.all_reduce_sum(np.array([(labels != IGNORE_INDEX).sum().item()]))[0])
    else:
        normaliser = float(recipe.batch_size * labels.shape[-2] * labels.shape[-1])
    optimizer.zero_grad(set_to_none=True)
    total = torch.zeros((), device=images.device)
    for k, (x, y) in enumerate(zip(images, labels)):
        last = k == len(images) - 1
        with net.no_sync() if world > 1 and not last else nullcontext():  # all-reduce gradients once, at the end
            with torch.autocast(images.device.type, dtype=AMP_DTYPES[amp]) if amp else nullcontext():
                if aux:
                    logits, aux_logits = net(x, with_aux=True)
                    loss = pixel_loss_sum(logits, y) + recipe.aux_weight * sum(pixel_loss_sum(a, y) for a in aux_logits)
                else:
                    loss = pixel_loss_sum(net(x), y)
            loss = loss / max(normaliser, 1.0)
            scaler.scale(loss * world).backward()  # DDP averages gradients over processes: undo the division
        total += loss.detach()
    scaler.step(optimizer)
    scaler.update()
    value = float(dist.all_reduce_sum(total.cpu().numpy().reshape(1))[0])
    if not math.isfinite(value):
        raise FloatingPointError(f"loss is {value} at iteration {iteration + 1}: training diverged")
    return value


def _state(optimizer, scaler, iteration: int, recipe: Recipe, options: LoopOptions) -> dict:
    """What a checkpoint carries beside the weights (plain types and tensors: loads with weights_only)."""
    state = {"iteration": iteration, "recipe": asdict(recipe), "seed": options.seed,
             "accumulate": options.accumulate, "amp": options.amp}
    if optimizer is not None:
        state.update(optimizer=optimizer.state_dict(), scaler=scaler.state_dict())
    return state


def _check_same_run(payload: dict, path: Path, recipe: Recipe, options: LoopOptions) -> None:
    ours = {"recipe": asdict(recipe), "seed": options.seed, "accumulate": options.accumulate, "amp": options.amp}
    changed = [k for k in ours if payload.get(k) != ours[k]]
    if changed:
        raise TrainError(f"{path} belongs to a run with another {' and '.join(changed)}; continuing it would "
                         f"mix two trainings. Use another output folder, or start over in this one with "
                         f"--no-resume (or delete {path.parent}).")


def _finished(path: Path, recipe: Recipe, options: LoopOptions) -> bool:
    if not path.is_file():
        return False
    payload = read_file(path)
    _check_same_run(payload, path, recipe, options)
    return payload.get("iteration") == recipe.iters


def _restore(path: Path, model: nn.Module, optimizer, scaler, recipe: Recipe, options: LoopOptions) -> int:
    payload = read_file(path)  # torch.load(weights_only=True)
    _check_same_run(payload, path, recipe, options)
    model.load_state_dict(payload["state_dict"])
    optimizer.load_state_dict(payload["optimizer"])
    scaler.load_state_dict(payload["scaler"])
    return int(payload["iteration"])


def _evaluate(model: nn.Module, dataset: SegDataset, device, max_images: int | None) -> dict:
    """Single-scale evaluation with the paper's protocol (engine.evaluate), back to training after."""
    from segbench.engine.evaluate import collect_results, evaluate, standard_evaluators
    from segbench.engine.protocols import paper_protocol

    evaluators = standard_evaluators(dataset, size_breakdown=False, bootstrap=0)
    evaluate(model, dataset, paper_protocol(model.info, dataset), evaluators, device, max_images)
    model.train()
    results = collect_results(evaluators)
    return {k: results[k] for k in ("mIoU", "mAcc", "aAcc")}


class _Log:
    """train_log.jsonl; a resumed run keeps the lines up to its checkpoint and appends."""

    def __init__(self, path: Path, start: int, notes: list[str]):
        kept = []
        if start and path.is_file():
            entries, torn = _log_entries(path)
            kept = [json.dumps(e) for e in entries if e["iter"] <= start]
            notes.extend(torn)
        self.file = path.open("w")
        self.file.writelines(line + "\n" for line in kept)

    def write(self, entry: dict) -> None:
        self.file.write(json.dumps(entry) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def _log_entries(path: Path) -> tuple[list[dict], list[str]]:
    """A log's entries and notes. A torn last line (the process died while writing it) is
    dropped and noted; a bad line elsewhere is damage, an error naming the file and line."""
    lines = Path(path).read_text().splitlines()
    entries, notes = [], []
    for number, line in enumerate(lines, 1):
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            if number < len(lines):
                raise TrainError(f"{path}:{number}: not a log entry; the log is damaged: delete the folder "
                                 "to start this training over") from None
            notes.append(f"{path}:{number}: torn last line (an interrupted write) dropped")
    return entries, notes


def read_log(path: str | Path) -> tuple[list[float], list[dict]]:
    """The per-iteration losses and the evaluations of a training log (a torn tail dropped:
    ``log_notes`` says so)."""
    entries, _ = _log_entries(Path(path))
    return [e["loss"] for e in entries if "loss" in e], [e for e in entries if "eval" in e]


def log_notes(path: str | Path) -> list[str]:
    return _log_entries(Path(path))[1]
