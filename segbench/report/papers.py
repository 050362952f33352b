"""Tables in the shape of the papers' tables (Segmenter Tables 3, 4, 6, 7, 8; SETR Tables 2,
4, 5, 6; SegFormer Tables 1a, 2): each quantity the paper reports, measured from the records, beside
the paper's number (``segbench/reference``) and the difference. SegFormer Table 5 is the
robustness section's (``robustness.py``).

A table appears when some record measures one of its quantities for a model the paper's
table reports; its rows are those models. Quantities no record measures are left out,
except the paper-only ones (e.g. ImageNet accuracy), which are context. A cost the paper
gives per dataset (flops, FPS at the dataset's input size) is taken from the profile record
at that size, for models evaluated on that dataset.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import pandas as pd

from segbench.report.tables import DIFF, Table, finished, input_size, protocol_of

SS, MS = "single_scale", "multi_scale"


@dataclass(frozen=True)
class Quantity:
    label: str  # the column as the paper prints it
    metric: str | None  # the reference metric (reference/<paper>.yaml); None: measured only
    source: str | None  # "eval" | "profile" record; None: the paper's number only
    field: str = ""  # dotted path in the record's `metrics`
    dataset: str | None = None  # the records' and the reference entries' dataset (None: any)
    protocol: str = SS  # eval records: single_scale | multi_scale
    scale: float = 1.0  # record units -> the paper's (counts -> M, MACs -> G)
    input: tuple[int, int] | None = None  # profile records at this input size (unless the reference names one)


@dataclass(frozen=True)
class PaperTable:
    paper: str  # start of the reference file's `paper`: "Segmenter", "SETR", "SegFormer"
    table: str
    title: str
    caption: str
    quantities: tuple[Quantity, ...]


def _ade(label, metric, source, field="", **kw) -> Quantity:
    return Quantity(label, metric, source, field, dataset="ade20k", **kw)


def _miou(label, metric, dataset, protocol=SS) -> Quantity:
    return Quantity(label, metric, "eval", "mIoU", dataset, protocol)


def _segformer_dataset(name: str, dataset: str, input_hw: tuple[int, int], ms: bool) -> tuple[Quantity, ...]:
    out = (Quantity(f"{name} Flops (G)", "gflops", "profile", "macs", dataset, scale=1e-9, input=input_hw),
           Quantity(f"{name} mIoU (SS)", "miou_ss", "eval", "mIoU", dataset, SS))
    return out + ((Quantity(f"{name} mIoU (MS)", "miou_ms", "eval", "mIoU", dataset, MS),) if ms else ())


PAPER_TABLES = (
    PaperTable("Segmenter", "3", "Segmenter Table 3: backbones and patch sizes (ADE20K val)",
               "Single-scale mIoU (%). Im/sec: the paper's on a V100 at 512×512 with the largest batch that fits; "
               "ours: the profile record at 512×512 (its device and batch are in the efficiency table).",
               (_ade("Im/sec", "images_per_s", "profile", "images_per_second", input=(512, 512)),
                Quantity("ImNet acc.", "imagenet_top1", None),
                _miou("mIoU (SS)", "miou_ss", "ade20k"))),
    PaperTable("Segmenter", "4", "Segmenter Table 4: mIoU by object size (ADE20K val)",
               "Single scale. The paper does not define its size protocol; ours is in the object-size section.",
               (_ade("Small", "miou_small", "eval", "size.small.mIoU"),
                _ade("Medium", "miou_medium", "eval", "size.medium.mIoU"),
                _ade("Large", "miou_large", "eval", "size.large.mIoU"),
                _miou("mIoU", "miou_ss", "ade20k"))),
    PaperTable("Segmenter", "6", "Segmenter Table 6: state of the art (ADE20K val)",
               "mIoU (%) single scale and multi-scale + flip. Im/sec as in Table 3.",
               (_ade("Im/sec", "images_per_s", "profile", "images_per_second", input=(512, 512)),
                _miou("mIoU (SS)", "miou_ss", "ade20k"), _miou("mIoU (MS)", "miou_ms", "ade20k", MS))),
    PaperTable("Segmenter", "7", "Segmenter Table 7: state of the art (Pascal Context val)",
               "mIoU (%) multi-scale + flip (the paper's only column), 60 classes with background; crop and "
               "window 480. Measured with the official evaluation's protocol (README: Test protocols).",
               (_miou("mIoU (MS)", "miou_ms", "pascal_context", MS),)),
    PaperTable("Segmenter", "8", "Segmenter Table 8: state of the art (Cityscapes val)",
               "mIoU (%) multi-scale + flip (the paper's only column); crop and window 768.",
               (_miou("mIoU (MS)", "miou_ms", "cityscapes", MS),)),
    PaperTable("SETR", "2", "SETR Table 2: SETR variants (Cityscapes val)",
               "Single-scale mIoU (%) after 40k / 80k iterations (batch 8); Δ against the 80k column, the "
               "schedule of mmsegmentation's SETR Cityscapes configs. #Params from the profile record.",
               (Quantity("#Params (M)", "params_m", "profile", "params", scale=1e-6),
                Quantity("mIoU 40k", "miou_ss_40k", None, dataset="cityscapes"),
                _miou("mIoU 80k", "miou_ss_80k", "cityscapes"))),
    PaperTable("SETR", "4", "SETR Table 4: ADE20K val",
               "mIoU and pixel accuracy (%), single scale (SS) and multi-scale (MS).",
               (_miou("mIoU (SS)", "miou_ss", "ade20k"), _miou("mIoU (MS)", "miou_ms", "ade20k", MS),
                _ade("Pixel Acc. (SS)", "pixel_acc_ss", "eval", "aAcc"),
                _ade("Pixel Acc. (MS)", "pixel_acc_ms", "eval", "aAcc", protocol=MS))),
    PaperTable("SETR", "5", "SETR Table 5: Pascal Context val",
               "mIoU (%) single scale (SS) and multi-scale + flip (MS), 60 classes with background, 80k iterations.",
               (_miou("mIoU (SS)", "miou_ss", "pascal_context"), _miou("mIoU (MS)", "miou_ms", "pascal_context", MS))),
    PaperTable("SETR", "6", "SETR Table 6: Cityscapes val",
               "mIoU (%) single scale (SS) and multi-scale + flip (MS) after 40k / 80k iterations (batch 8); ours "
               "beside the 80k columns, the schedule of the released Cityscapes models.",
               (Quantity("mIoU 40k (SS)", "miou_ss_40k", None, dataset="cityscapes"),
                Quantity("mIoU 40k (MS)", "miou_ms_40k", None, dataset="cityscapes", protocol=MS),
                _miou("mIoU 80k (SS)", "miou_ss_80k", "cityscapes"),
                _miou("mIoU 80k (MS)", "miou_ms_80k", "cityscapes", MS))),
    PaperTable("SegFormer", "1a", "SegFormer Table 1a: model size, flops and accuracy",
               "Params in millions (encoder, decoder); Flops = multiply-accumulates (G) at the reference's input "
               "size, from the profile record at that size; mIoU (%) single / multi-scale.",
               (_ade("Encoder (M)", "encoder_params_m", "profile", "params_encoder", scale=1e-6),
                _ade("Decoder (M)", "decoder_params_m", "profile", "params_decoder", scale=1e-6),
                *_segformer_dataset("ADE20K", "ade20k", (512, 512), ms=True),
                *_segformer_dataset("Cityscapes", "cityscapes", (1024, 2048), ms=True),
                *_segformer_dataset("COCO-Stuff", "coco_stuff", (512, 512), ms=False))),
    PaperTable("SegFormer", "2", "SegFormer Table 2: comparison on ADE20K and Cityscapes",
               "Params (M); Flops (G multiply-accumulates) and FPS from the profile record at the dataset's input "
               "size (the paper's FPS: one V100); mIoU (%) measured single scale (the paper's column mixes SS "
               "and MS, see the notes).",
               (Quantity("Params (M)", "params_m", "profile", "params", scale=1e-6),
                Quantity("ADE20K Flops (G)", "gflops", "profile", "macs", "ade20k", scale=1e-9, input=(512, 512)),
                Quantity("ADE20K FPS", "fps", "profile", "images_per_second", "ade20k", input=(512, 512)),
                _miou("ADE20K mIoU", "miou", "ade20k"),
                Quantity("Cityscapes Flops (G)", "gflops", "profile", "macs", "cityscapes", scale=1e-9,
                         input=(1024, 2048)),
                Quantity("Cityscapes FPS", "fps", "profile", "images_per_second", "cityscapes", input=(1024, 2048)),
                _miou("Cityscapes mIoU", "miou", "cityscapes"))),
)

_SIZE = re.compile(r"(\d+)x(\d+)")


NO_PAPER_NUMBER = "no paper number"  # a user model's paper cells


def dataset_kind(record: dict) -> str:
    return str(record.get("dataset", "")).split("/")[0]


def reference_entry(frame: pd.DataFrame, spec: PaperTable, arch: str, q: Quantity) -> dict | None:
    """The paper's entry for (table, model, metric) on the quantity's dataset. Entries for another
    setting (e.g. SegFormer-B0 at a smaller short side) are not the table's main row."""
    if q.metric is None:
        return None
    rows = frame[frame["paper"].str.startswith(spec.paper) & (frame["table"] == spec.table)
                 & (frame["model"] == arch) & (frame["metric"] == q.metric)]
    for entry in rows.astype(object).where(rows.notna(), None).to_dict("records"):  # missing fields: None
        dataset, protocol = entry["dataset"], entry["protocol"]
        if dataset is not None and q.dataset is not None and dataset != q.dataset:
            continue
        if protocol is None or protocol == q.protocol or _SIZE.fullmatch(str(protocol)):
            return entry
    return None


def _dig(metrics: dict, path: str):
    value = metrics
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def measured(records: list[dict], model: str, arch: str, q: Quantity, entry: dict | None) -> tuple[float, dict | None]:
    """The quantity measured for (model, arch), and the record it comes from."""
    if q.source is None:
        return math.nan, None
    candidates = [r for r in finished(records, q.source) if r["model"] == model and r.get("arch") == arch]
    if q.source == "eval":
        candidates = [r for r in candidates if protocol_of(r) == q.protocol
                      and (q.dataset is None or dataset_kind(r) == q.dataset)]
    else:
        evaluated = any(r["model"] == model and r.get("arch") == arch and dataset_kind(r) == q.dataset
                        for r in finished(records, "eval"))
        if q.dataset is not None and not evaluated:
            return math.nan, None  # a cost on a dataset (its input size, its classes) needs the model evaluated there
        size = _SIZE.fullmatch(str((entry or {}).get("protocol")))
        wanted = (int(size[1]), int(size[2])) if size else q.input
        candidates = [r for r in candidates if wanted is None or input_size(r) == wanted]
    for record in reversed(candidates):  # the latest record that has the number
        value = _dig(record["metrics"], q.field)
        if isinstance(value, (int, float)):
            return value * q.scale, record
    return math.nan, None


def paper_tables(records: list[dict]) -> list[Table]:
    from segbench.reference import reference_frame

    frame = reference_frame()
    models = list(dict.fromkeys((r["model"], r.get("arch")) for r in records
                                if r.get("status") == "ok" and r.get("kind") in ("eval", "profile")))
    tables = []
    for spec in PAPER_TABLES:
        reported = set(frame[frame["paper"].str.startswith(spec.paper) & (frame["table"] == spec.table)]["model"])
        rows, notes, kept = [], {}, set()
        for model, arch in models:
            user_model = ":" in arch  # segbench.models.custom: measured beside the papers' rows, no number of its own
            if arch not in reported and not user_model:
                continue
            row, any_measured = {("model", ""): model, ("arch", ""): arch}, False
            for q in spec.quantities:
                entry = reference_entry(frame, spec, arch, q)
                paper = entry["value"] if entry else math.nan
                ours, source = measured(records, model, arch, q, entry)
                if q.source is not None:
                    row[(q.label, "ours")] = ours
                    if not math.isnan(ours):
                        any_measured = True
                        kept.add(q.label)
                if q.metric is not None:
                    row[(q.label, "paper")] = NO_PAPER_NUMBER if user_model else paper
                if q.source is not None and q.metric is not None:
                    row[(q.label, DIFF)] = ours - paper if entry and not math.isnan(ours) else math.nan
                if entry and entry["note"] and not math.isnan(ours if q.source else paper):
                    notes.setdefault(f"{arch}, {q.label} (paper): {entry['note']}", None)
                if source is not None and q.source == "profile":
                    notes.setdefault(_profile_note(source), None)
            if any_measured:
                rows.append(row)
        if not rows:
            continue
        columns = [("model", ""), ("arch", "")]
        for q in spec.quantities:
            if q.source is None or q.label in kept:
                columns += [c for c in [(q.label, "ours"), (q.label, "paper"), (q.label, DIFF)] if c in rows[0]]
        table = pd.DataFrame(rows)[columns]
        table.columns = pd.MultiIndex.from_tuples(columns)
        name = f"{spec.paper.lower()}_table{spec.table}"
        tables.append(Table(name, spec.title, table, spec.caption + " Δ = ours − paper.", list(notes)))
    return tables


def _profile_note(record: dict) -> str:
    inp, env = record["input"], record.get("env") or {}
    device = ((record.get("profile") or {}).get("latency") or {}).get("device") or env.get("device_name") or "?"
    return (f"{record['model']} (ours): cost from the profile at {inp['height']}×{inp['width']}, batch "
            f"{inp.get('batch_size')}, {inp.get('dtype')}, on {device}")
