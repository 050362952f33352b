"""Robustness scores from per-cell mIoU (in %, as in the records).

- a corruption's score is its mIoU averaged over its severities (a cell of SegFormer
  Table 5); a group's score (blur, noise, digital, weather) averages its corruptions;
- mPC (mean performance under corruption) averages the corruptions' scores, so every
  corruption weighs the same whatever its number of severities (noise has 3, the rest 5);
  rPC = mPC / clean mIoU, in % (mmdetection's robustness tool reports both this way);
- Corruption Degradation (Kamann & Rother, after Hendrycks & Dietterich's CE), with the
  degradation D = 1 - mIoU: CD_c = sum_s D_f(c, s) / sum_s D_ref(c, s), and the relative
  CD_c = sum_s (D_f(c, s) - D_f(clean)) / sum_s (D_ref(c, s) - D_ref(clean)); both in %,
  with their means over the corruptions (mCD, relative mCD). An undefined ratio (the
  reference model loses nothing) is NaN.
- relative CD divides by the reference's own loss against its clean mIoU, so a reference that
  barely degrades under a corruption makes it explode (the quickstart's first reference,
  segmenter_p32, lost less than 1 point under every corruption and gave relative mCDs of
  -9408 and -1037). Where the reference loses less than ``MIN_REFERENCE_DROP`` mIoU points
  on average over the corruption's severities, that corruption's relative CD is unstable: NaN, listed in
  ``relative_CD_unstable``, and left out of the relative mCD (every model shares the reference,
  so all are averaged over the same corruptions). CD itself divides by the reference's whole
  degradation (1 - mIoU), which is never small, and is always given.

Every (corruption, severity) cell of the grid must be there: a missing one is an error that
names it, never a zero (mmdetection's tool counts a skipped severity as 0).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from segbench.robustness.corruptions import GROUP_OF, CorruptionError

# 2.5 points: the most a 20-image corruption cell of one model moved between two runs that differ
# only in float summation order (2.33, baselines/tolerances.yaml), which is what the regression gate
# allows a cell. A reference drop within that is not a measured loss, and the ratio is noise over noise.
MIN_REFERENCE_DROP = 2.5

Cells = Mapping[tuple[str, int], float]  # (corruption, severity) -> mIoU in %
Grid = Mapping[str, Sequence[int]]  # corruption -> severities


def _check(model: str, clean: float | None, cells: Cells, grid: Grid) -> None:
    missing = [f"{c} severity {s}" for c, severities in grid.items() for s in severities
               if not _is_number(cells.get((c, s)))]
    if not _is_number(clean):
        missing.insert(0, "the clean images")
    if missing:
        shown = ", ".join(missing[:6]) + (f" and {len(missing) - 6} more" if len(missing) > 6 else "")
        raise CorruptionError(f"{model or 'model'}: no mIoU for {shown}; run the sweep to the end "
                              "(`segbench run` resumes it) or fix the failed jobs")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not math.isnan(value)


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def robustness_scores(clean: float, cells: Cells, grid: Grid, model: str = "") -> dict:
    """Clean mIoU, per-corruption and per-group scores, mPC and rPC (all in %)."""
    _check(model, clean, cells, grid)
    per_corruption = {c: _mean(cells[c, s] for s in severities) for c, severities in grid.items()}
    per_group = {}
    for c, score in per_corruption.items():
        per_group.setdefault(GROUP_OF[c], []).append(score)
    mpc = _mean(per_corruption.values())
    return {"clean": clean, "corruption": per_corruption,
            "group": {g: _mean(scores) for g, scores in per_group.items()},
            "mPC": mpc, "rPC": 100 * mpc / clean if clean else math.nan}


def corruption_degradation(clean: float, cells: Cells, ref_clean: float, ref_cells: Cells, grid: Grid,
                           model: str = "", reference: str = "reference") -> dict:
    """CD and relative CD per corruption against a reference model, and their means (in %)."""
    _check(model, clean, cells, grid)
    _check(reference, ref_clean, ref_cells, grid)
    cd, relative, unstable = {}, {}, []
    for c, severities in grid.items():
        degradation = sum(1 - cells[c, s] / 100 for s in severities)
        ref_degradation = sum(1 - ref_cells[c, s] / 100 for s in severities)
        # sum_s (D(c, s) - D(clean)) = sum_s D(c, s) - n * D(clean)
        n = len(severities)
        cd[c] = _ratio(degradation, ref_degradation)
        ref_loss = ref_degradation - n * (1 - ref_clean / 100)
        if 100 * ref_loss / n < MIN_REFERENCE_DROP:
            relative[c] = math.nan
            unstable.append(c)
        else:
            relative[c] = _ratio(degradation - n * (1 - clean / 100), ref_loss)
    stable = [v for c, v in relative.items() if c not in unstable]
    return {"reference": reference, "CD": cd, "relative_CD": relative, "relative_CD_unstable": unstable,
            "mCD": _mean(cd.values()), "relative_mCD": _mean(stable) if stable else math.nan}


def _ratio(numerator: float, denominator: float) -> float:
    return 100 * numerator / denominator if denominator else math.nan


def severity_curves(clean: float, cells: Cells, grid: Grid, model: str = "") -> dict[str, dict[int, float]]:
    """group -> {severity: mean mIoU over the group's corruptions}, severity 0 = clean."""
    _check(model, clean, cells, grid)
    curves: dict[str, dict[int, list[float]]] = {}
    for c, severities in grid.items():
        curve = curves.setdefault(GROUP_OF[c], {0: [clean]})
        for s in severities:
            curve.setdefault(s, []).append(cells[c, s])
    return {g: {s: _mean(v) for s, v in sorted(curve.items())} for g, curve in curves.items()}
