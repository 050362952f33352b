"""Metric states that declare how each of their arrays reduces across processes.

Modelled on torchmetrics' ``add_state(name, default, dist_reduce_fx)``: a state registers
each array with its reduction, and one generic ``synchronize`` applies them.

- ``"sum"``: fixed-size arrays (confusion matrices, histograms); shards add up exactly
  for integers (one ``all_reduce(SUM)`` each).
- ``"gather"``: per-image lists; under distributed evaluation rank r holds images r, r + W,
  ...; gathering puts them back in dataset order on every rank.

``synchronize`` is idempotent: after the first call the state holds the totals of every
rank and later calls do nothing until ``reset``; updating a synchronised state is an error
(it would mix one rank's new images into everyone's totals).
"""
from __future__ import annotations

import copy

from segbench import dist

REDUCTIONS = ("sum", "gather")


class MetricState:
    def __init__(self):
        self._defaults: dict[str, tuple[object, str]] = {}
        self._synchronized = False

    def add_state(self, name: str, default, reduce: str) -> None:
        if reduce not in REDUCTIONS:
            raise ValueError(f"reduce must be one of {REDUCTIONS}, got {reduce!r}")
        if reduce == "gather" and not isinstance(default, list):
            raise ValueError(f"state {name}: a gathered state is a list (one entry per image)")
        self._defaults[name] = (default, reduce)
        setattr(self, name, copy.deepcopy(default))

    def reset(self) -> None:
        for name, (default, _) in self._defaults.items():
            setattr(self, name, copy.deepcopy(default))
        self._synchronized = False

    def _check_open(self) -> None:
        """Call at the start of ``update``."""
        if self._synchronized:
            raise RuntimeError(f"{type(self).__name__} was synchronised across processes; reset it before updating")

    def synchronize(self) -> None:
        """Every rank's totals, on every rank (a no-op in one process, and when already done)."""
        if self._synchronized:
            return
        for name, (_, reduce) in self._defaults.items():
            value = getattr(self, name)
            setattr(self, name, dist.all_reduce_sum(value) if reduce == "sum" else dist.gather_sharded(value))
        self._synchronized = True
