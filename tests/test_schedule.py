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


def test_research_epochs_are_rounds_before_the_middle_of_auto_decoding_and_after_the_switch():
    schedule = Schedule(16, RunConfig(particles="p.star", out="run", epochs=22, explore_epochs=10))
    assert schedule.research_epochs() == ()  # before the switch
    schedule.switch_epoch = 10
    assert schedule.research_epochs() == (12, 14, 16)
    schedule.switch_epoch = 19  # a late switch leaves room for one round
    assert schedule.research_epochs() == (20,)
    late = Schedule(16, RunConfig(particles="p.star", out="run", epochs=22, explore_epochs=0))
    late.switch_epoch = 10
    assert late.research_epochs() == ()  # no exploration: no grid to re-search with
