"""Suite files: YAML -> frozen dataclasses, validated field by field.

A suite says which datasets, which models (a registry name plus a checkpoint, or a
``train:`` block), and which evaluations to run. Unknown keys, wrong types and bad
values are errors that name the file, the line and the field, e.g.::

    suites/x.yaml:12: models.seg_b16.checkpoint: expected a string, got 3

Strings may use ``${VAR}`` or ``${VAR:-default}``; an unset variable without a default
is an error naming the field that used it.
"""
from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from segbench.errors import SegbenchError


class SuiteError(SegbenchError, ValueError):
    """A suite file is malformed; the message names the file, line and field."""


@dataclass(frozen=True)
class DatasetSpec:
    kind: str  # synthetic | ade20k | cityscapes | pascal_context | coco_stuff
    root: str | None = None  # dataset folder in its official layout (not needed for synthetic)
    options: dict[str, Any] = field(default_factory=dict)  # passed to the reader


@dataclass(frozen=True)
class TrainSpec:
    dataset: str  # a key of `datasets`
    split: str = "train"
    recipe: str | None = None  # a recipe name (README: Training); default: the paper's for the family and dataset
    iters: int | None = None  # overrides of the recipe
    batch_size: int | None = None  # global batch (split over torchrun processes and accumulation steps)
    lr: float | None = None
    crop_size: int | None = None
    accumulate: int = 1  # gradient-accumulation steps per iteration
    amp: str | None = None  # mixed precision: bf16 | fp16
    encoder_init: str | None = None  # ImageNet weights for a ViT encoder (timm .pth / .safetensors, Google .npz)
    workers: int = 2  # data-loading processes
    checkpoint_every: int = 1000  # iterations between resumable checkpoints
    eval_every: int = 0  # evaluate on `eval_split` every N iterations (0: never)
    eval_split: str = "val"
    eval_max_images: int | None = None


@dataclass(frozen=True)
class PreprocessSpec:
    """A user model's input normalisation, (x - mean) / std on the 0-255 scale."""

    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None


@dataclass(frozen=True)
class ModelProtocolSpec:
    """A user model's test settings (``ModelInfo`` names; README: Benchmark your own model)."""

    test_mode: str | None = None  # whole | slide
    crop_size: int | None = None  # the training crop; the slide window unless test_window
    test_window: int | None = None
    test_stride: int | None = None
    test_scale: tuple[int, ...] | None = None  # (long, short) keep-ratio resize; default: the dataset's
    size_divisor: int | None = None


@dataclass(frozen=True)
class ModelSpec:
    arch: str  # a registry name (`segbench models`), module:func, path/file.py:func or hf:PATH
    checkpoint: str | None = None  # segbench, official Segmenter/mmseg/HF/timm formats
    train: TrainSpec | None = None
    weights: str | None = None  # "random": evaluate untrained weights drawn from the suite's seed (explicit only)
    num_classes: int | None = None  # default: the class count of the datasets it meets
    allow_partial: bool = False  # load a checkpoint that does not fit exactly (the record lists what did not)
    args: dict[str, Any] = field(default_factory=dict)  # a user model's factory keyword arguments
    preprocess: PreprocessSpec | None = None  # a user model's settings (else its `info` attribute)
    protocol: ModelProtocolSpec | None = None


@dataclass(frozen=True)
class EvalSpec:
    dataset: str  # a key of `datasets`
    split: str = "val"
    protocol: str = "single_scale"  # single_scale | multi_scale: the paper's, per model
    models: tuple[str, ...] = ()  # keys of `models`; empty: every model
    mode: str | None = None  # override: whole | slide
    window: int | None = None
    stride: int | None = None
    scales: tuple[float, ...] | None = None
    flip: bool | None = None
    max_images: int | None = None  # evaluate only the first N images (quick runs)
    size_breakdown: bool = True  # mIoU over small / medium / large objects (DESIGN.md protocol)
    bootstrap: int = 1000  # resamples of the images for the 95 % interval of mIoU; 0: none
    per_image: bool = True  # write per-image counts beside the record (<job>.per_image.npz) for `segbench compare`
    previews: int = 0  # save the first N predictions as PNGs for the report's qualitative overlays (evaluate only)
    batch_size: Any = "auto"  # crops per forward: a number, or auto (the largest that fits on a GPU, the protocol's on a CPU)
    workers: int = 0  # processes that read and resize images ahead of the model
    amp: str | None = None  # autocast: bf16 | fp16 (can change predictions: part of the job id)
    compile: bool = False  # torch.compile (part of the job id)
    boundary: bool = True  # boundary IoU per class, mBIoU, min(IoU, BIoU) (segbench.metrics.boundary)
    boundary_dilation: float = 0.02  # boundary band width as a fraction of the image diagonal (Cheng et al.)
    calibration: bool = True  # ECE, NLL, Brier, misclassification AUROC / AUPR / FPR95 (segbench.metrics.calibration)


@dataclass(frozen=True)
class CorruptionSpec(EvalSpec):
    """A robustness sweep: an evaluation (the keys of `evaluate`) under every corruption x
    severity, plus clean (SegFormer Table 5's protocol; see segbench.robustness)."""

    corruptions: tuple[str, ...] = ()  # default: the 16 of SegFormer Table 5
    severities: tuple[int, ...] = ()  # default: noise 1-3, the others 1-5 (kept within those)
    root: str | None = None  # a folder written by `segbench corrupt`; default: corrupt on the fly
    reference: str | None = None  # a key of `models`: the baseline of Corruption Degradation (CD)


@dataclass(frozen=True)
class ProfileSpec:
    """The cost of each model at each input size: parameters, multiply-accumulates, latency,
    throughput and peak memory (segbench.profiling), on the suite's device."""

    dataset: str  # a key of `datasets`: the class count, and the test protocol of the pipeline throughput
    sizes: tuple[str, ...] = ("512x512",)  # input HEIGHTxWIDTH; one record per model x size
    models: tuple[str, ...] = ()  # keys of `models`; empty: every model
    batch_size: Any = 1  # images per timed forward, or "max": the largest that fits in memory (Segmenter's im/s)
    warmup: int = 5  # untimed forwards first
    runs: int = 20  # timed forwards (median, 10-90 % spread); 0: parameters and MACs only (no forward at all)
    pipeline: bool = True  # also time the full test protocol (resize, windows, upsampling, argmax) per image
    fvcore: bool = True  # also count MACs with fvcore (a real forward at batch 1) beside FlopCounterMode
    amp: bool = False  # autocast: float16 on CUDA, bfloat16 on CPU
    channels_last: bool = False


@dataclass(frozen=True)
class Suite:
    name: str
    datasets: dict[str, DatasetSpec]
    models: dict[str, ModelSpec]
    evaluate: tuple[EvalSpec, ...] = ()
    corruption: tuple[CorruptionSpec, ...] = ()
    profile: tuple[ProfileSpec, ...] = ()
    description: str = ""
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int | None = None  # torch / OpenMP threads for every job (numbers can depend on it); default: torch's
    results: str | None = None  # default: results/<name>
    report: str | None = None  # render a report here after the run
    path: str = ""  # the file it was read from (set by the loader)
    lines: dict[str, int] = field(default_factory=dict, compare=False, repr=False)  # field -> line (loader)

    @property
    def results_dir(self) -> Path:
        return Path(self.results or Path("results") / self.name)


PROTOCOLS = ("single_scale", "multi_scale")
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class _Where:
    """Maps a field path such as ``models.seg.train.iters`` to its line in the file."""

    def __init__(self, path: str, lines: dict[str, int]):
        self.path, self.lines = path, lines

    def error(self, field_path: str, message: str) -> SuiteError:
        full, line = field_path, self.lines.get(field_path)
        while line is None and "." in field_path:
            field_path = field_path.rsplit(".", 1)[0]
            line = self.lines.get(field_path)
        if line is None:  # no lines (a suite built from a command's arguments): the whole field
            field_path = full
        location = f"{self.path}:{line}" if line else self.path
        return SuiteError(f"{location}: {field_path}: {message}" if field_path else f"{location}: {message}")


def _to_python(node: yaml.Node, path: str, lines: dict[str, int], source: str) -> Any:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        out = {}
        for key_node, value_node in node.value:
            key = key_node.value
            child = f"{path}.{key}" if path else key
            line = key_node.start_mark.line + 1
            if key in out:  # PyYAML keeps the last one silently
                raise SuiteError(f"{source}:{line}: {child}: duplicate key (first at line {lines[child]}); "
                                 "keep one of them")
            lines[child] = line
            out[key] = _to_python(value_node, child, lines, source)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_to_python(item, f"{path}[{i}]", lines, source) for i, item in enumerate(node.value)]
    if node.tag == "tag:yaml.org,2002:null" and node.value == "":
        # `checkpoint:   # TODO`: an empty value is a forgotten one; `null` says none on purpose
        raise SuiteError(f"{source}:{node.start_mark.line + 1}: {path}: no value given; write one, "
                         "or remove the key for its default")
    return yaml.safe_load(yaml.serialize(node))  # scalars: let PyYAML resolve the type


def _expand(value: str, field_path: str, where: _Where) -> str:
    def replace(match: re.Match) -> str:
        name, default = match.group(1), match.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        raise where.error(field_path, f"environment variable {name} is not set (use ${{{name}:-default}} "
                                      "to give a default)")
    return _ENV.sub(replace, value)


def _convert(value: Any, hint: Any, field_path: str, where: _Where) -> Any:
    """Check ``value`` against a type hint and convert it (lists -> tuples, dicts -> dataclasses)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(value, inner, field_path, where)
    if hint is Any:
        return _expand(value, field_path, where) if isinstance(value, str) else value
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, field_path, where)
    if origin is dict:
        if not isinstance(value, dict):
            raise where.error(field_path, f"expected a mapping, got {_describe(value)}")
        return {k: _convert(v, args[1], f"{field_path}.{k}", where) for k, v in value.items()}
    if origin is tuple:
        items = value if isinstance(value, list) else [value]  # a scalar is a one-item list
        return tuple(_convert(v, args[0], f"{field_path}[{i}]", where) for i, v in enumerate(items))
    if hint is str:
        if not isinstance(value, str):
            raise where.error(field_path, f"expected a string, got {_describe(value)}")
        return _expand(value, field_path, where)
    if hint is bool:
        if not isinstance(value, bool):
            raise where.error(field_path, f"expected true or false, got {_describe(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise where.error(field_path, f"expected an integer, got {_describe(value)}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise where.error(field_path, f"expected a number, got {_describe(value)}")
        return float(value)
    raise TypeError(f"unsupported type hint {hint!r}")


def _describe(value: Any) -> str:
    return "nothing" if value is None else f"{type(value).__name__} {value!r}"


def _build(cls, data: Any, path: str, where: _Where):
    if not isinstance(data, dict):
        raise where.error(path, f"expected a mapping of {cls.__name__} fields, got {_describe(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in ("path", "lines")}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        child = f"{path}.{unknown[0]}" if path else unknown[0]
        raise where.error(child, f"unknown key {unknown[0]!r}; allowed keys: {', '.join(fields)}")
    kwargs = {}
    for name, f in fields.items():
        child = f"{path}.{name}" if path else name
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], child, where)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise where.error(path, f"missing required key {name!r}")
    return cls(**kwargs)


def _check_references(suite: Suite, where: _Where) -> None:
    from segbench.data.datasets import DATASETS, DatasetError, check_dataset_options
    from segbench.devices import device_problem
    from segbench.models import is_model

    problem = device_problem(suite.device)
    if problem:
        raise where.error("device", problem)
    if suite.threads is not None and suite.threads < 1:
        raise where.error("threads", f"expected a positive number of threads, got {suite.threads}")
    for name, spec in suite.datasets.items():
        if spec.kind not in DATASETS:
            raise where.error(f"datasets.{name}.kind", f"unknown dataset kind {spec.kind!r}; "
                                                       f"choose from {', '.join(sorted(DATASETS))}")
        for option, value in spec.options.items():  # the reader's own checks, before any job runs
            try:
                check_dataset_options(spec.kind, spec.root, {option: value})
            except DatasetError as exc:
                raise where.error(f"datasets.{name}.options.{option}", str(exc)) from None
        for option in ("num_images", "image_size"):  # the synthetic set's sizes: 0 gives an empty, NaN result
            value = spec.options.get(option)
            if spec.kind == "synthetic" and value is not None and (not isinstance(value, int) or value < 1):
                raise where.error(f"datasets.{name}.options.{option}", f"expected a positive integer, got {value!r}")
    if not suite.models:
        raise where.error("models", "no models: name at least one (`segbench models` lists the architectures)")
    evaluated = {m for block in (*suite.evaluate, *suite.corruption) for m in block.models or suite.models}
    for name, spec in suite.models.items():
        if not is_model(spec.arch):
            raise where.error(f"models.{name}.arch", f"unknown model {spec.arch!r}; `segbench models` lists them")
        _check_weights(name, spec, where, evaluated)
        if spec.train:
            _check_train(suite, name, spec, where)
    for i, spec in enumerate(suite.evaluate):
        _check_eval(suite, spec, f"evaluate[{i}]", where)
    for i, spec in enumerate(suite.corruption):
        _check_eval(suite, spec, f"corruption[{i}]", where)
        _check_corruption(suite, spec, f"corruption[{i}]", where)
    for i, spec in enumerate(suite.profile):
        _check_profile(suite, spec, f"profile[{i}]", where)


def _check_weights(name: str, spec: ModelSpec, where: _Where, evaluated: set[str]) -> None:
    """Where an evaluated model's weights come from must be said: a checkpoint, a training job,
    or explicitly random ones (never random by omission: that gives a normal-looking mIoU row).
    Profiling needs no weights."""
    path = f"models.{name}"
    from segbench.models import custom

    given = [k for k in ("checkpoint", "train") if getattr(spec, k) is not None]
    if custom.carries_weights(spec.arch):
        given.append("model folder's weights")
    if spec.weights not in (None, "random"):
        raise where.error(f"{path}.weights", f"the only value is 'random', got {spec.weights!r}")
    if spec.weights and given:
        raise where.error(f"{path}.weights", f"random weights and a {given[0]} exclude each other")
    if not given and not spec.weights and name in evaluated:
        raise where.error(path, "no weights: give a `checkpoint`, a `train` block, or `weights: random` "
                                "to evaluate untrained weights on purpose")


def _check_train(suite: Suite, name: str, spec: ModelSpec, where: _Where) -> None:
    from segbench.data.datasets import dataset_classes
    from segbench.engine.train import suite_recipe

    train, path = spec.train, f"models.{name}.train"
    if train.dataset not in suite.datasets:
        raise where.error(f"{path}.dataset", f"no dataset named {train.dataset!r} in `datasets`")
    for field_name in ("iters", "batch_size", "crop_size", "accumulate", "checkpoint_every"):
        value = getattr(train, field_name)
        if value is not None and value < (0 if field_name == "checkpoint_every" else 1):
            raise where.error(f"{path}.{field_name}", f"must be positive, got {value}")
    if train.amp not in (None, "bf16", "fp16"):
        raise where.error(f"{path}.amp", f"mixed precision is bf16 or fp16, got {train.amp!r}")
    data = suite.datasets[train.dataset]
    num_classes = len(dataset_classes(data.kind, data.root, data.options))
    try:
        suite_recipe(spec, data.kind, num_classes)
    except ValueError as exc:
        raise where.error(f"{path}.recipe", str(exc)) from None


def _check_eval(suite: Suite, spec: EvalSpec, path: str, where: _Where) -> None:
    if spec.dataset not in suite.datasets:
        raise where.error(f"{path}.dataset", f"no dataset named {spec.dataset!r} in `datasets`")
    if spec.protocol not in PROTOCOLS:
        raise where.error(f"{path}.protocol", f"unknown protocol {spec.protocol!r}; choose from {PROTOCOLS}")
    if spec.bootstrap < 0:
        raise where.error(f"{path}.bootstrap", f"expected 0 (off) or a number of resamples, got {spec.bootstrap}")
    if spec.previews < 0:
        raise where.error(f"{path}.previews", f"expected 0 (off) or a number of images, got {spec.previews}")
    if not 0 < spec.boundary_dilation < 1:
        raise where.error(f"{path}.boundary_dilation", "the boundary band as a fraction of the image diagonal, "
                                                       f"in (0, 1) (default 0.02), got {spec.boundary_dilation}")
    if spec.mode not in (None, "whole", "slide"):
        raise where.error(f"{path}.mode", f"mode must be 'whole' or 'slide', got {spec.mode!r}")
    for model in spec.models:
        if model not in suite.models:
            raise where.error(f"{path}.models", f"no model named {model!r} in `models`")
    if spec.max_images is not None and spec.max_images < 1:
        raise where.error(f"{path}.max_images", f"expected a positive number of images, got {spec.max_images}")
    for name in ("window", "stride"):
        if getattr(spec, name) is not None and getattr(spec, name) < 1:
            raise where.error(f"{path}.{name}", f"expected a positive number of pixels, got {getattr(spec, name)}")
    for i, scale in enumerate(spec.scales or ()):
        if not scale > 0:
            raise where.error(f"{path}.scales[{i}]", f"a test scale is a positive ratio (e.g. 0.5, 1.0), got {scale}")
    if spec.amp not in (None, "bf16", "fp16"):
        raise where.error(f"{path}.amp", f"mixed precision is bf16 or fp16, got {spec.amp!r}")
    if spec.workers < 0:
        raise where.error(f"{path}.workers", f"expected 0 or more, got {spec.workers}")
    if spec.batch_size != "auto" and (isinstance(spec.batch_size, bool) or not isinstance(spec.batch_size, int)
                                      or spec.batch_size < 1):
        raise where.error(f"{path}.batch_size", f"expected a positive number or auto, got {spec.batch_size!r}")


def _check_corruption(suite: Suite, spec: CorruptionSpec, path: str, where: _Where) -> None:
    from segbench.robustness.corruptions import CorruptionError, corruption_grid

    if spec.previews:
        raise where.error(f"{path}.previews", "prediction previews are for `evaluate` blocks; a sweep keeps one "
                                              "image per cell for the report by itself")
    for field_name, severities in (("corruptions", ()), ("severities", spec.severities)):
        try:
            corruption_grid(spec.corruptions, severities)
        except CorruptionError as exc:
            raise where.error(f"{path}.{field_name}", str(exc)) from None
    if spec.reference is not None and spec.reference not in (spec.models or suite.models):
        raise where.error(f"{path}.reference", f"{spec.reference!r} is not one of the models this sweep evaluates")


def _check_profile(suite: Suite, spec: ProfileSpec, path: str, where: _Where) -> None:
    from segbench.profiling import parse_batch_size, parse_size

    if spec.dataset not in suite.datasets:
        raise where.error(f"{path}.dataset", f"no dataset named {spec.dataset!r} in `datasets`")
    for model in spec.models:
        if model not in suite.models:
            raise where.error(f"{path}.models", f"no model named {model!r} in `models`")
    for i, size in enumerate(spec.sizes):
        try:
            parse_size(size)
        except ValueError as exc:
            raise where.error(f"{path}.sizes[{i}]", str(exc)) from None
    try:
        parse_batch_size(spec.batch_size)
    except ValueError as exc:
        raise where.error(f"{path}.batch_size", str(exc)) from None
    for name in ("warmup", "runs"):
        if getattr(spec, name) < 0:
            raise where.error(f"{path}.{name}", f"expected 0 or more, got {getattr(spec, name)}")


def load_suite(path: str | os.PathLike) -> Suite:
    """Read and validate a suite file; raises :class:`SuiteError` with file:line: field."""
    path = Path(path)
    if not path.is_file():
        raise SuiteError(f"{path}: suite file not found")
    try:
        root = yaml.compose(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise SuiteError(f"{path}{line}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if root is None:
        raise SuiteError(f"{path}: the suite file is empty")
    lines: dict[str, int] = {}
    data = _to_python(root, "", lines, str(path))
    return build_suite(data, str(path), lines)


def build_suite(data: dict, source: str, lines: dict[str, int] | None = None) -> Suite:
    """A suite from its plain-data form, validated as a file would be (``source`` names
    where it came from in messages: a file, or the command that built it)."""
    lines = lines or {}
    where = _Where(source, lines)
    suite = _build(Suite, data, "", where)
    suite = dataclasses.replace(suite, path=source, lines=lines)
    suite = dataclasses.replace(suite, models={k: _user_model(suite, k, m, where) for k, m in suite.models.items()})
    _check_references(suite, where)
    return suite


def _user_model(suite: Suite, key: str, spec: ModelSpec, where: _Where) -> ModelSpec:
    """A user model entry (arch with ':') registered under the name its jobs build it by
    (segbench.models.custom), and built once on the meta device so that import, factory and
    settings errors stop the run here."""
    from segbench.data.datasets import DatasetError, dataset_classes
    from segbench.models import custom

    path = f"models.{key}"
    if not custom.is_custom(spec.arch):
        for name in ("args", "preprocess", "protocol"):
            if getattr(spec, name):
                raise where.error(f"{path}.{name}", "only for user models (arch module:func, file.py:func or hf:PATH)")
        return spec
    settings = {**dataclasses.asdict(spec.preprocess or PreprocessSpec()),
                **dataclasses.asdict(spec.protocol or ModelProtocolSpec())}
    location = f"{suite.path}:{suite.lines.get(path + '.arch', '?')}: {path}"
    name = custom.register(spec.arch, Path(suite.path).parent, spec.args, settings, location)
    met = {e.dataset for e in (*suite.evaluate, *suite.corruption, *suite.profile) if key in (e.models or suite.models)}
    met |= {spec.train.dataset} if spec.train else set()
    counts = {spec.num_classes} if spec.num_classes else set()
    for dataset in sorted(met & set(suite.datasets)) if not counts else ():
        d = suite.datasets[dataset]
        try:
            counts.add(len(dataset_classes(d.kind, d.root, d.options)))
        except (DatasetError, KeyError, TypeError):
            pass  # reported with the dataset's other problems before any job runs
    for count in sorted(counts):
        try:
            custom.probe(name, count)
        except custom.CustomModelError as exc:
            raise SuiteError(str(exc)) from None
    return dataclasses.replace(spec, arch=name)


def locate(suite: Suite, field_path: str, message: str) -> str:
    """``message`` prefixed with the suite file, line and field it is about."""
    return str(_Where(suite.path, suite.lines).error(field_path, message))


def missing_files(suite: Suite) -> list[str]:
    """Located messages for every file the suite names that does not exist. Checked apart
    from the schema so that `segbench run` can list all missing inputs at once."""
    problems = [locate(suite, f"models.{name}.checkpoint", f"file not found: {spec.checkpoint}")
                for name, spec in suite.models.items() if spec.checkpoint and not Path(spec.checkpoint).is_file()]
    problems += [locate(suite, f"models.{name}.train.encoder_init", f"file not found: {spec.train.encoder_init}")
                 for name, spec in suite.models.items()
                 if spec.train and spec.train.encoder_init and not Path(spec.train.encoder_init).is_file()]
    for i, spec in enumerate(suite.corruption):
        if spec.root is not None and not (Path(spec.root) / "manifest.json").is_file():
            problems.append(locate(suite, f"corruption[{i}].root", (
                f"{spec.root} has no manifest.json; write the corrupted images there first with "
                f"`segbench corrupt {suite.datasets[spec.dataset].kind} --out {spec.root} ...`, "
                "or drop `root` to corrupt on the fly")))
    return problems
