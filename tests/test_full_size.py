"""Full-size images: the working box is chosen per device, and the final maps come back at the stored box."""

from types import SimpleNamespace

import numpy as np
import pytest

from napari_cryospin.data.mrc import read_volume
from napari_cryospin.data.particles import load_particles
from napari_cryospin.engine.config import RunConfig
from napari_cryospin.engine.engine import Engine
from napari_cryospin.engine.full_size import WORKING_MAP, full_size_maps, write_final_maps
from napari_cryospin.engine.working_box import WORKING_BOX, working_box
from napari_cryospin.metrics.fsc import fsc
from napari_cryospin.physics.reconstruction import split_halves


@pytest.fixture(scope="module")
def box96(tmp_path_factory):
    """300 particles of box 96 (the bundled box-32 map upsampled), SNR 1, shifts up to ±4.5 px."""
    from napari_cryospin.resources import bundled_map_path
    from napari_cryospin.simulation.simulate import simulate_to_dir

    out = tmp_path_factory.mktemp("box96")
    volume, voxel = read_volume(bundled_map_path(32))
    simulate_to_dir(volume, voxel, 300, out, box=96, snr=1.0, max_shift_px=4.5, seed=4)
    return out


def test_working_box_is_the_stack_box_up_to_a_cap_per_device():
    assert working_box(256, None, "cpu") == WORKING_BOX["cpu"] == 64
    assert working_box(256, None, "cuda") == WORKING_BOX["gpu"] == 128
    assert working_box(48, None, "cpu") == 48  # small stacks stay as they are
    assert working_box(256, 96, "cpu") == 96  # --box wins


def test_engine_works_at_the_cpu_box_with_pixel_size_and_shifts_scaled(box96, tmp_path):
    eng = Engine(RunConfig(particles=str(box96 / "particles.star"), out=str(tmp_path / "run"), device="cpu"))
    stored = load_particles(box96 / "particles.star")
    assert stored.box == 96 and eng.model.box == 64 == eng.model.particles.stack.box
    assert eng.model.particles.pixel_size == pytest.approx(stored.pixel_size * 96 / 64)
    assert eng.model.particles.stack[[0]].shape == (1, 64, 64)
    truth = load_particles(box96 / "truth.star")
    assert np.allclose(truth.at_box(32).shifts, truth.shifts / 3)


def test_full_size_maps_come_back_at_the_stored_box_and_match_the_truth(box96, tmp_path):
    working = load_particles(box96 / "truth.star").at_box(32)  # poses found at a working box of 32
    halves = list(split_halves(len(working)))
    maps = full_size_maps(working, working.rotations, working.shifts, halves)
    assert maps is not None and maps.box == 96 and maps.full.shape == (96, 96, 96)
    assert maps.voxel == pytest.approx(working.pixel_size / 3)
    truth, _ = read_volume(box96 / "truth_volume.mrc")
    good = np.corrcoef(maps.full.ravel(), truth.ravel())[0, 1]
    assert good > 0.8
    assert np.corrcoef(maps.half_a.ravel(), maps.half_b.ravel())[0, 1] > 0.5
    # The shifts must be scaled by the box ratio: unscaled (working-box pixels) they smear the map.
    wrong = full_size_maps(working, working.rotations, working.shifts / 3, halves)

    def mid_fsc(vol):  # mean FSC with the truth over shells 8–24 of 48, where a shift error shows
        return fsc(vol, truth, 1.0)[1][8:25].mean()

    assert mid_fsc(wrong.full) < mid_fsc(maps.full) - 0.1
    stored = load_particles(box96 / "truth.star")
    assert full_size_maps(stored, stored.rotations, stored.shifts, halves) is None  # already full size


def test_written_maps_are_full_size_and_the_working_map_is_kept(box96, tmp_path):
    working = load_particles(box96 / "truth.star").at_box(32)
    halves = list(split_halves(len(working)))
    model = SimpleNamespace(  # a stand-in run model
        particles=working,
        box=32,
        device="cpu",
        symmetry=None,  # no point group (RunModel.symmetry: its operators)
        config=SimpleNamespace(half_maps=True, local_refine="off", seed=0),
    )
    small = np.zeros((32, 32, 32), np.float32)
    info, maps, _, _ = write_final_maps(
        model, tmp_path, (small, small, small), halves, (working.rotations, working.shifts)
    )
    for name in ("volume.mrc", "half_a.mrc", "half_b.mrc"):
        vol, voxel = read_volume(tmp_path / name)
        assert vol.shape == (96, 96, 96) and voxel == pytest.approx(working.pixel_size / 3, rel=1e-4)
    vol, voxel = read_volume(tmp_path / WORKING_MAP)
    assert vol.shape == (32, 32, 32) and voxel == pytest.approx(working.pixel_size, rel=1e-4)
    assert info["box"] == 96 == maps.box and info["working_box"] == 32
    assert maps.half_a.shape == (96, 96, 96) and maps.voxel == pytest.approx(working.pixel_size / 3)


@pytest.fixture(scope="module")
def odd_stack(tiny_dataset, tmp_path_factory):
    """The tiny data set's 200 images cropped to 31 px (an odd box), with its particles.star."""
    import shutil

    import mrcfile

    out = tmp_path_factory.mktemp("odd")
    data = mrcfile.read(tiny_dataset / "particles.mrcs")
    with mrcfile.new(out / "particles.mrcs") as mrc:
        mrc.set_data(np.ascontiguousarray(data[:, :31, :31]))
        mrc.voxel_size = 1.0
    shutil.copy(tiny_dataset / "particles.star", out / "particles.star")
    return out, data


def test_an_odd_stack_is_served_at_the_even_box_below_with_its_pixel_size(odd_stack, tiny_dataset, caplog):
    folder, data = odd_stack
    odd = load_particles(folder / "particles.star")
    even = load_particles(tiny_dataset / "particles.star")
    assert odd.stack.stored_box == 31 and odd.box == odd.stack.original_box == 30
    assert odd.pixel_size == pytest.approx(even.pixel_size)  # rows dropped, not resampled
    np.testing.assert_array_equal(odd.stack[[0, 5]], data[[0, 5], :30, :30])
    assert "the images are 31 pixels (odd); they are used at 30" in caplog.text
    assert odd.at_box(16).stack[[0]].shape == (1, 16, 16)
    with pytest.raises(ValueError, match=r"box 32: the images are 31 pixels \(odd, so served at 30\)\. Fix"):
        load_particles(folder / "particles.star", box=32)


def test_a_run_on_an_odd_stack_writes_its_maps_at_the_even_box(odd_stack, tmp_path):
    from tiny_run import TINY_RUN

    folder, _ = odd_stack
    out = tmp_path / "run"
    settings = {**TINY_RUN, "box": 16, "max_particles": 100}
    for _ in Engine(RunConfig(particles=str(folder / "particles.star"), out=str(out), **settings)).run():
        pass
    vol, voxel = read_volume(out / "volume.mrc")
    assert vol.shape == (30, 30, 30) and voxel == pytest.approx(
        load_particles(folder / "particles.star").pixel_size
    )
    assert read_volume(out / WORKING_MAP)[0].shape == (16, 16, 16)
    assert len(load_particles(out / "poses.star")) == 100
