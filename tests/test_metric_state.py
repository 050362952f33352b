"""Metric states declare their reduction; synchronize is idempotent; a synchronised state refuses updates."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from segbench.metrics.confusion import ConfusionMatrix
from segbench.metrics.state import MetricState


def test_states_declare_how_they_reduce():
    state = ConfusionMatrix(3)
    assert {name: reduce for name, (_, reduce) in state._defaults.items()} == {"matrix": "sum"}
    with pytest.raises(ValueError, match="reduce must be"):
        MetricState().add_state("x", np.zeros(2), "mean")
    with pytest.raises(ValueError, match="a gathered state is a list"):
        MetricState().add_state("x", np.zeros(2), "gather")


def test_synchronize_is_idempotent_and_reset_reopens():
    state = ConfusionMatrix(3)
    state.update(torch.tensor([0, 1, 2]), torch.tensor([0, 1, 1]))
    before = state.matrix.copy()
    state.synchronize()
    state.synchronize()
    np.testing.assert_array_equal(state.matrix, before)
    with pytest.raises(RuntimeError, match="reset it"):
        state.update(torch.tensor([0]), torch.tensor([0]))
    state.reset()
    assert state.matrix.sum() == 0
    state.update(torch.tensor([0]), torch.tensor([0]))
    assert state.matrix.sum() == 1
