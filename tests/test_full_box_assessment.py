"""A run whose stack is larger than its working box reports the resolution of its full-size half maps
(mask-corrected FSC 0.143) and writes its postprocessed maps at that box."""

import json

import numpy as np
import pytest

from napari_cryospin.data.mrc import read_volume
from napari_cryospin.engine.config import RunConfig
from napari_cryospin.engine.engine import Engine
from napari_cryospin.engine.events import Stage
from napari_cryospin.engine.run_results import read_run
from napari_cryospin.metrics.fsc import fsc, resolution_at
from tiny_run import TINY_RUN


@pytest.fixture(scope="module")
def box48_run(tmp_path_factory):
    """A tiny run at working box 32 on 200 particles of box 48 (the bundled box-64 map cropped; SNR 1)."""
    from napari_cryospin.resources import bundled_map_path
    from napari_cryospin.simulation.simulate import simulate_to_dir

    data = tmp_path_factory.mktemp("box48")
    volume, voxel = read_volume(bundled_map_path(64))
    simulate_to_dir(volume, voxel, 200, data, box=48, snr=1.0, max_shift_px=1.0, seed=5)
    out = data / "run"
    config = RunConfig(particles=str(data / "particles.star"), out=str(out), **{**TINY_RUN, "box": 32})
    last = None
    for snap in Engine(config).run():
        last = snap
    assert last is not None and last.stage == Stage.DONE
    return out, last


def test_resolution_and_fsc_come_from_the_full_size_half_maps(box48_run):
    out, last = box48_run
    final = json.loads((out / "metrics.json").read_text())["final"]
    half_a, voxel = read_volume(out / "half_a.mrc")
    half_b, _ = read_volume(out / "half_b.mrc")
    assert half_a.shape == (48, 48, 48)
    freq, unmasked = fsc(half_a, half_b, voxel)
    curves = final["fsc_curves"]
    assert len(curves["frequency"]) == 25
    assert curves["frequency"][-1] == pytest.approx(1 / (2 * voxel), rel=1e-3)  # Nyquist of the full box
    assert np.allclose(curves["unmasked"], unmasked, atol=1e-4)  # the written full-size halves' FSC
    assert final["fsc"][1] == curves["corrected"]  # the reported curve: mask-corrected
    assert final["resolution"] == pytest.approx(resolution_at(freq, curves["corrected"], 0.143))
    assert final["postprocess"]["resolution"] == final["resolution"]
    for name in ("mask.mrc", "volume_sharpened.mrc", "local_resolution.mrc"):
        vol, vox = read_volume(out / name)
        assert vol.shape == (48, 48, 48) and vox == pytest.approx(voxel)
    working = final["working_box_fsc"]  # the working box's FSC is kept, at its own 17 shells
    assert len(working["fsc"][1]) == 17 and working["resolution"] >= 2 * voxel * 48 / 32 * 0.999
    # the last snapshot (the dock's plots) and the run folder read back (the explorer) say the same
    assert last.resolution == pytest.approx(final["resolution"])
    assert len(last.fsc[0]) == 25 and "unmasked" in last.fsc_curves
    results = read_run(out)
    assert set(results.fsc_curves) == set(last.fsc_curves)
    assert len(results.fsc_curves["unmasked"][1]) == 25
