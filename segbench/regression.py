"""The regression gate (``segbench check``): compare records to a baseline folder of records,
metric by metric, with tolerances from a YAML file, e.g.::

    machine_dependent: same_machine   # gate timings only between records of one machine
    metrics:
      mIoU:                                        # points: may fall by at most 1.0 in an evaluation,
        - {drop: 1.0, kinds: [eval]}               # 2.5 in a (20-image) corruption cell
        - {drop: 2.5, kinds: [corruption]}
      latency_ms: {rise_pct: 25, noise: true, machine_dependent: true}
      macs:       {change_pct: 0.5}                # either way: a change is a finding

A record is paired with the baseline record of the same job id, or else with the only one
of the same kind, model, dataset and protocol (and corruption cell, or profile input size):
the pairing says which. A baseline job without a record here, and any error record here,
fail the check; records the baseline does not have are listed as new.

Noise-aware metrics (``noise: true``) use the spread the profiler records beside them
(``<metric>_p10`` / ``<metric>_p90``): a timing regresses only when it moved by more than
the tolerance *and* the two runs' spreads do not overlap (for a rise: the new p10 lies above
the baseline's p90), so a slower run on a noisy machine is not a regression by itself.

Environment. Each record's ``env`` names the versions of the packages its numbers depend on,
the thread count and the CPU. Where a pair's environments differ, the differences are listed
beside the findings, and under ``environment_dependent: same_environment`` (the default) the
numbers that follow from the environment rather than from segbench are "not gated": timings
(``machine_dependent`` rules) and the accuracy of models the suite trained itself (another
torch, thread count or CPU trains other weights from the same seed). ``always`` gates them
anyway. Accuracy of fixed checkpoints, parameter counts and MACs are gated everywhere.

A check that could not read a record (in either folder), names a tolerance metric that no
record has, or ends up checking no metric at all fails with that reason: a gate that checked
nothing does not pass.
"""
from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from segbench.errors import SegbenchError
from segbench.results import scan_records

LIMITS = ("drop", "drop_pct", "rise", "rise_pct", "change", "change_pct")
MACHINE_POLICIES = ("same_machine", "always", "never")
MACHINE_FIELDS = ("host", "platform", "device", "device_name", "threads")  # of a record's `env`
ENVIRONMENT_POLICIES = ("same_environment", "always")
# what trains other weights from the same seed, or times differently (of a record's `env`;
# `packages` adds every resolved package version the record lists)
ENVIRONMENT_FIELDS = ("python", "torch", "numpy", "timm", "threads", "cpu")


class CheckError(SegbenchError, ValueError):
    """A problem with the check's inputs (folders, tolerance file): exit code 2."""


@dataclass(frozen=True)
class Rule:
    metric: str  # a dotted path in a record's `metrics`, e.g. mIoU, size.small.mIoU, latency_ms
    drop: float | None = None  # higher is better: may fall by at most this (metric units)
    drop_pct: float | None = None  # ... by at most this % of the baseline
    rise: float | None = None  # lower is better: may grow by at most this
    rise_pct: float | None = None
    change: float | None = None  # either direction
    change_pct: float | None = None
    noise: bool = False  # also require the runs' recorded spreads (<metric>_p10 / _p90) not to overlap
    machine_dependent: bool = False  # compared only as the file's `machine_dependent` policy says
    kinds: tuple[str, ...] = ()  # only records of these kinds (eval, corruption, profile, train); empty: all


@dataclass(frozen=True)
class Tolerances:
    rules: tuple[Rule, ...]
    machine_dependent: str = "same_machine"  # same_machine | always | never
    environment_dependent: str = "same_environment"  # same_environment | always
    path: str = ""


def load_tolerances(path: str | Path) -> Tolerances:
    path = Path(path)
    if not path.is_file():
        raise CheckError(f"{path}: tolerance file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise CheckError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("metrics"), dict) or not data["metrics"]:
        raise CheckError(f"{path}: expected a mapping with `metrics:` (metric name -> limits), e.g. "
                         "`metrics: {mIoU: {drop: 1.0}}`")
    unknown = set(data) - {"metrics", "machine_dependent", "environment_dependent"}
    if unknown:
        raise CheckError(f"{path}: unknown key {sorted(unknown)[0]!r}; allowed: metrics, machine_dependent, "
                         "environment_dependent")
    policy = data.get("machine_dependent", "same_machine")
    if policy not in MACHINE_POLICIES:
        raise CheckError(f"{path}: machine_dependent: expected one of {', '.join(MACHINE_POLICIES)}, got {policy!r}")
    environment_policy = data.get("environment_dependent", "same_environment")
    if environment_policy not in ENVIRONMENT_POLICIES:
        raise CheckError(f"{path}: environment_dependent: expected one of {', '.join(ENVIRONMENT_POLICIES)}, "
                         f"got {environment_policy!r}")
    rules = []
    for metric, limits in data["metrics"].items():
        several = isinstance(limits, list)  # one rule per kind of record, e.g. looser for corruption cells
        for i, one in enumerate(limits if several else [limits]):
            rules.append(_rule(str(metric), one, f"{path}: metrics.{metric}" + (f"[{i}]" if several else "")))
    return Tolerances(tuple(rules), policy, environment_policy, str(path))


def _rule(metric: str, limits, where: str) -> Rule:
    allowed = [f.name for f in fields(Rule) if f.name != "metric"]
    if not isinstance(limits, dict):
        raise CheckError(f"{where}: expected a mapping of limits ({', '.join(LIMITS)}) or a list of them, "
                         f"got {limits!r}")
    bad = sorted(set(limits) - set(allowed))
    if bad:
        raise CheckError(f"{where}: unknown key {bad[0]!r}; allowed: {', '.join(allowed)}")
    if not any(limits.get(k) is not None for k in LIMITS):
        raise CheckError(f"{where}: give at least one limit ({', '.join(LIMITS)})")
    for key, value in limits.items():
        if key in LIMITS and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
            raise CheckError(f"{where}.{key}: expected a number >= 0, got {value!r}")
        if key in ("noise", "machine_dependent") and not isinstance(value, bool):
            raise CheckError(f"{where}.{key}: expected true or false, got {value!r}")
        if key == "kinds" and (not isinstance(value, list) or not all(isinstance(k, str) for k in value)):
            raise CheckError(f"{where}.kinds: expected a list of record kinds, e.g. [eval, corruption], got {value!r}")
    return Rule(metric, **{k: tuple(v) if k == "kinds" else v for k, v in limits.items()})


# ------------------------------------------------------------------ pairing records


def where(record: dict) -> str:
    """What a record measured, beyond kind and model: dataset and protocol, cell, or input size."""
    if record.get("kind") == "profile" and isinstance(record.get("input"), dict):
        inp = record["input"]
        return f"{inp.get('height')}x{inp.get('width')} batch {inp.get('batch_size')} {inp.get('dtype') or ''}".strip()
    parts = [record.get("dataset"), record.get("protocol_name")]
    if record.get("kind") == "corruption":
        parts.append(f"{record.get('corruption')}-{record.get('severity')}")
    return " ".join(str(p) for p in parts if p)


def pair_key(record: dict) -> tuple:
    return record.get("kind"), record.get("model"), where(record)


@dataclass
class Pairing:
    pairs: list[tuple[dict, dict, str]] = field(default_factory=list)  # (baseline, current, matched by)
    missing: list[dict] = field(default_factory=list)  # baseline records with no current one
    new: list[dict] = field(default_factory=list)  # current records the baseline has not


def pair_records(baseline: list[dict], current: list[dict]) -> Pairing:
    """Pair by job id and model name (two suite models with the same weights share a job id,
    each with its own record), else by kind, model, dataset and protocol."""
    result = Pairing()
    by_id = {(r["job_id"], r.get("model")): r for r in current}
    unpaired_base = []
    for b in baseline:
        if (b["job_id"], b.get("model")) in by_id:
            result.pairs.append((b, by_id.pop((b["job_id"], b.get("model"))), "job id"))
        else:
            unpaired_base.append(b)
    rest = list(by_id.values())
    for b in unpaired_base:
        same = [c for c in rest if pair_key(c) == pair_key(b)]
        if len(same) == 1 and sum(pair_key(o) == pair_key(b) for o in unpaired_base) == 1:
            result.pairs.append((b, same[0], "kind, model, dataset, protocol"))
            rest.remove(same[0])
        else:
            result.missing.append(b)
    result.new = rest
    return result


# ------------------------------------------------------------------ comparing metrics


def metric_value(record: dict, path: str):
    value = record.get("metrics")
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def record_environment(record: dict) -> dict:
    """The parts of a record's ``env`` its numbers depend on (``ENVIRONMENT_FIELDS`` and each
    recorded package version); None where the record does not say."""
    env = record.get("env") or {}
    found = {key: env.get(key) for key in ENVIRONMENT_FIELDS}
    for name, version in (env.get("packages") or {}).items():
        found.setdefault(name, version)  # torch, numpy and timm are there already (torch with its build tag)
    return found


def environment_differences(baseline: dict, current: dict) -> dict[str, tuple]:
    """{field: (baseline's, current's)} for every environment field the two records differ in."""
    before, after = record_environment(baseline), record_environment(current)
    return {key: (before.get(key), after.get(key)) for key in sorted(set(before) | set(after), key=_env_order)
            if before.get(key) != after.get(key)}


def _env_order(key: str) -> tuple:
    return (ENVIRONMENT_FIELDS.index(key) if key in ENVIRONMENT_FIELDS else len(ENVIRONMENT_FIELDS), key)


def differences_text(differences: dict[str, tuple]) -> str:
    return ", ".join(f"{key} {_pair_text(pair)}" for key, pair in differences.items())


def _pair_text(pair: tuple) -> str:
    return " -> ".join("not recorded" if value is None else str(value) for value in pair)


def trained_here(record: dict) -> bool:
    """A training record, or a record of a model the suite trained (its weights follow from
    the environment as much as from the seed)."""
    return record.get("kind") == "train" or bool((record.get("config") or {}).get("trained_by"))


def machine(record: dict) -> tuple:
    env = record.get("env") or {}
    latency = ((record.get("profile") or {}).get("latency") or {})
    return tuple(env.get(k) for k in MACHINE_FIELDS) + (latency.get("device"), latency.get("threads"))


@dataclass
class Finding:
    baseline: dict
    current: dict
    matched_by: str
    metric: str
    before: float | None
    after: float | None
    limit: str  # the tolerance, in words
    verdict: str  # ok | regression | not gated | metric missing
    note: str = ""

    @property
    def failed(self) -> bool:
        return self.verdict in ("regression", "metric missing")

    @property
    def moved(self) -> bool:
        return self.before != self.after


def _limit_text(rule: Rule) -> str:
    parts = [f"{name.replace('_pct', '')} ≤ {getattr(rule, name):g}{' %' if name.endswith('_pct') else ''}"
             for name in LIMITS if getattr(rule, name) is not None]
    return ", ".join(parts) + (" (noise-aware)" if rule.noise else "")


def _exceeds(rule: Rule, before: float, after: float) -> list[str]:
    """The limits the move from ``before`` to ``after`` breaks."""
    delta = after - before
    pct = 100 * delta / abs(before) if before else (math.inf if delta else 0.0)
    broken = []
    checks = {"drop": -delta, "drop_pct": -pct, "rise": delta, "rise_pct": pct, "change": abs(delta),
              "change_pct": abs(pct)}
    for name, moved in checks.items():
        limit = getattr(rule, name)
        if limit is not None and moved > limit + 1e-9 * max(1.0, abs(limit)):
            broken.append(name)
    return broken


def _spreads_overlap(rule: Rule, baseline: dict, current: dict, broken: list[str]) -> tuple[bool, str]:
    """Whether the two runs' recorded spreads overlap in the direction of the move."""
    b10, b90 = metric_value(baseline, rule.metric + "_p10"), metric_value(baseline, rule.metric + "_p90")
    c10, c90 = metric_value(current, rule.metric + "_p10"), metric_value(current, rule.metric + "_p90")
    if None in (b10, b90, c10, c90):
        return False, "no spread recorded: compared by median"
    rising = any(name.startswith("rise") for name in broken) or (
        any(name.startswith("change") for name in broken) and metric_value(current, rule.metric) >
        metric_value(baseline, rule.metric))
    if rising:
        return c10 <= b90, f"p10 now {c10:.4g} vs p90 before {b90:.4g}"
    return c90 >= b10, f"p90 now {c90:.4g} vs p10 before {b10:.4g}"


def compare(baseline: dict, current: dict, matched_by: str, rule: Rule, policy: str,
            environment_policy: str = "same_environment") -> Finding | None:
    before, after = metric_value(baseline, rule.metric), metric_value(current, rule.metric)
    if before is None or (rule.kinds and baseline.get("kind") not in rule.kinds):
        return None  # the baseline does not measure it: nothing to hold the record to
    finding = Finding(baseline, current, matched_by, rule.metric, before, after, _limit_text(rule), "ok")
    if after is None:
        finding.verdict, finding.note = "metric missing", "the baseline has it, this record does not"
        return finding
    if rule.machine_dependent and (policy == "never" or (policy == "same_machine"
                                                         and machine(baseline) != machine(current))):
        finding.verdict = "not gated"
        finding.note = "machine-dependent, measured on another machine" if policy == "same_machine" else \
            "machine-dependent metrics are not gated (tolerance file)"
        return finding
    differences = environment_differences(baseline, current)
    if differences and environment_policy == "same_environment" and (rule.machine_dependent
                                                                     or trained_here(baseline)):
        finding.verdict = "not gated"
        finding.note = ("timing" if rule.machine_dependent else "model trained by the suite") + \
            f" in another environment ({differences_text(differences)})"
        return finding
    broken = _exceeds(rule, before, after)
    if broken and rule.noise:
        overlap, finding.note = _spreads_overlap(rule, baseline, current, broken)
        if overlap:
            finding.note += ": within the runs' noise"
            return finding
    if broken:
        finding.verdict = "regression"
        if differences:  # gated anyway (a fixed checkpoint, or `always`): say what else changed
            finding.note = "; ".join(filter(None, [finding.note, f"environment differs: "
                                                                 f"{differences_text(differences)}"]))
    return finding


@dataclass
class CheckResult:
    findings: list[Finding]
    pairing: Pairing
    errors: list[dict]  # error records among the results
    unreadable: list[tuple[Path, str]] = field(default_factory=list)  # record files of either folder, and why
    environments: dict[str, set] = field(default_factory=dict)  # field -> {(baseline's, current's)} over the pairs

    @property
    def ok(self) -> bool:
        return not self.reasons

    @property
    def regressions(self) -> list[Finding]:
        return [f for f in self.findings if f.failed]

    @property
    def environments_text(self) -> str:
        return "; ".join(f"{key} " + ", ".join(_pair_text(p) for p in sorted(pairs, key=str))
                         for key, pairs in self.environments.items())

    @property
    def reasons(self) -> list[str]:
        """Why the check fails, one phrase each; empty when it passes."""
        reasons = []
        beyond = sum(f.verdict == "regression" for f in self.findings)
        lost = sum(f.verdict == "metric missing" for f in self.findings)
        for count, one, several in ((beyond, "regression", "regressions"),
                                    (lost, "metric missing from its record", "metrics missing from their records"),
                                    (len(self.pairing.missing), "baseline job without a record",
                                     "baseline jobs without a record"),
                                    (len(self.errors), "failed job", "failed jobs"),
                                    (len(self.unreadable), "unreadable record", "unreadable records")):
            if count:
                reasons.append(f"{count} {one if count == 1 else several}")
        if not any(f.verdict in ("ok", "regression") for f in self.findings):
            reasons.append("no metric was checked (every one missing or not gated)")
        return reasons


def check(results: str | Path, baseline: str | Path, tolerances: Tolerances) -> CheckResult:
    for folder, what in ((results, "results"), (baseline, "baseline")):
        if not Path(folder).is_dir():
            raise CheckError(f"{folder}: no such {what} folder")
    base_records, base_problems = scan_records(baseline)
    if not base_records and not base_problems:
        raise CheckError(f"{baseline}: no records in the baseline folder (refresh it with `make baseline`)")
    current, problems = scan_records(results)
    _check_metric_names(tolerances, base_records + current)
    pairing = pair_records(base_records, current)
    findings, errors, environments = [], [], {}
    for b, c, matched_by in pairing.pairs:
        if c.get("status") != "ok":
            errors.append(c)
            continue
        if b.get("status") != "ok":
            continue  # the baseline failed there: nothing to hold the record to
        for key, pair in environment_differences(b, c).items():
            environments.setdefault(key, set()).add(pair)
        for rule in tolerances.rules:
            finding = compare(b, c, matched_by, rule, tolerances.machine_dependent, tolerances.environment_dependent)
            if finding is not None:
                findings.append(finding)
    errors += [r for r in pairing.new if r.get("status") != "ok"]  # a failed job fails the check, new or not
    return CheckResult(findings, pairing, errors, base_problems + problems, environments)


def _check_metric_names(tolerances: Tolerances, records: list[dict]) -> None:
    """A tolerance for a metric that no record has is a misspelling (``miou``), not a pass."""
    known = {rule.metric for rule in tolerances.rules if any(metric_value(r, rule.metric) is not None for r in records)}
    for rule in tolerances.rules:
        if rule.metric not in known:
            names = sorted({name for r in records for name in _metric_names(r.get("metrics"))})
            close = difflib.get_close_matches(rule.metric, names, n=1, cutoff=0.5) or \
                [n for n in names if n.lower() == rule.metric.lower()]
            hint = f"; did you mean {close[0]!r}?" if close else f"; metrics there: {', '.join(names[:12])}"
            raise CheckError(f"{tolerances.path}: metrics.{rule.metric}: no record in the results or the baseline "
                             f"has a metric {rule.metric!r}{hint}")


def _metric_names(metrics, prefix: str = "") -> list[str]:
    if not isinstance(metrics, dict):
        return []
    names = []
    for key, value in metrics.items():
        if isinstance(value, dict):
            names += _metric_names(value, f"{prefix}{key}.")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            names.append(f"{prefix}{key}")
    return names


def as_dict(result: CheckResult) -> dict:
    def ident(r: dict) -> dict:
        return {"job_id": r["job_id"], "kind": r.get("kind"), "model": r.get("model"), "where": where(r)}

    return {"ok": result.ok, "reasons": result.reasons, "compared": len(result.pairing.pairs),
            "matched_by_job_id": sum(m == "job id" for _, _, m in result.pairing.pairs),
            "matched_by_kind_model_dataset_protocol": sum(m != "job id" for _, _, m in result.pairing.pairs),
            "findings": [{**ident(f.current), "baseline_job_id": f.baseline["job_id"], "matched_by": f.matched_by,
                          "metric": f.metric, "baseline": f.before, "current": f.after, "limit": f.limit,
                          "verdict": f.verdict, "note": f.note} for f in result.findings],
            "missing": [ident(r) for r in result.pairing.missing], "new": [ident(r) for r in result.pairing.new],
            "errors": [{**ident(r), "error": f"{r['error']['type']}: {r['error']['message']}"} for r in result.errors],
            "unreadable": [{"path": str(path), "reason": why} for path, why in result.unreadable],
            "environment_differences": {key: sorted([list(p) for p in pairs], key=str)
                                        for key, pairs in result.environments.items()}}
