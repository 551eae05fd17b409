"""bench/relion_inputs.py: a stack prepared as RELION's extraction leaves it; the commands its GUI runs."""

from __future__ import annotations

import shlex
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import starfile

from bench_scripts import import_bench


@pytest.fixture(scope="module")
def relion_inputs():
    return import_bench("relion_inputs")


def test_the_stack_is_inverted_and_its_background_normalised(relion_inputs, tiny_dataset, tmp_path):
    from napari_cryospin.data.particles import load_particles

    summary = relion_inputs.write_inputs(tiny_dataset / "particles.star", tmp_path)
    original = load_particles(tiny_dataset / "particles.star")
    assert summary["polarity_detected"] == "dark"  # the simulator's convention
    written = mrcfile.read(summary["stack"]).astype(np.float64)
    assert written.shape == (len(original), original.box, original.box)
    ring = relion_inputs.background_mask(original.box)
    np.testing.assert_allclose(written[:, ring].mean(axis=1), 0.0, atol=1e-5)
    np.testing.assert_allclose(written[:, ring].std(axis=1), 1.0, rtol=1e-5)
    raw = np.asarray(original.stack[:], np.float64)
    for image_in, image_out in zip(raw[:5], written[:5], strict=True):
        assert np.corrcoef(image_in.ravel(), image_out.ravel())[0, 1] < -0.999  # negated, only rescaled
    table = starfile.read(summary["star"], always_dict=True)["particles"]
    index, path = table["rlnImageName"].iloc[7].split("@")
    assert int(index) == 8 and Path(path) == Path(summary["stack"]).resolve()
    assert 0 < summary["particle_diameter_A"] < original.box * original.pixel_size


def test_refine3d_starts_from_the_last_sgd_map_under_mpi(relion_inputs, tmp_path):
    inputs = {"star": "/data/particles.star", "particle_diameter_A": 250}
    script = relion_inputs.pipeline_script(inputs, tmp_path, threads=1).read_text().splitlines()
    guard, initial = shlex.split(script[-2])[:5], shlex.split(script[-2])[5:]
    refine = shlex.split(script[-1])
    assert initial[0] == "relion_refine" and "--sgd" in initial and "--ctf" not in initial
    # auto-refine's random halves need MPI: a leader and a follower per half, on the method's one core
    assert refine[:3] == ["taskset", "-c", "0"] and refine[refine.index("-n") + 1] == "3"
    refine = refine[refine.index("relion_refine_mpi") :]
    assert "--auto_refine" in refine and "--split_random_halves" in refine
    last_map = refine[refine.index("--ref") + 1]
    out_root = initial[initial.index("--o") + 1]
    assert last_map == f"{out_root}_it{relion_inputs.SGD_ITERATIONS:03d}_class001.mrc"
    assert guard == ["[", "-f", last_map, "]", "||"]  # a continued run keeps its InitialModel
    assert refine[refine.index("--particle_diameter") + 1] == "250"
