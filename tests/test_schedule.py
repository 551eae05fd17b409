"""The schedule's filter for the pose steps: each shell of the map is weighted by the halves' last FSC."""

import torch

from napari_cryospin.engine.config import RunConfig
from napari_cryospin.engine.schedule import Schedule


def test_reference_weight_is_the_halves_fsc_per_shell_clipped_to_zero_and_one():
    schedule = Schedule(16, RunConfig(particles="p.star", out="run"))
    assert schedule.reference_weight(16, "cpu") is None
    fsc = [1.0, 0.95, 0.8, 0.6, 0.4, 0.2, 0.05, -0.1, 0.02]
    schedule.reference_fsc = fsc
    weight = schedule.reference_weight(16, "cpu")
    assert weight.shape == (16, 16, 16)
    c = 8
    assert weight[c, c, c] == 1.0
    assert weight[c, c, c + 3] == torch.tensor(0.6)  # shell 3 along x
    assert weight[c + 4, c, c] == torch.tensor(0.4)  # shell 4 along z
    assert weight[c, c - 7, c] == 0.0  # a negative FSC filters the shell out
    assert weight[0, 0, 0] == torch.tensor(0.02)  # corners beyond the last shell take the last value
