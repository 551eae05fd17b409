"""Prepare a stack for RELION as its own extraction would leave it, and write the commands its GUI runs.

RELION's CTF is the conventions' −H, so it expects protein-white images normalised to a background of
mean 0 and standard deviation 1 (Extract with "invert contrast" and "normalize"). The polarity is measured
(``diagnostics.polarity``), never assumed; the background is the ring outside 75 % of the box radius
(RELION's default background radius). The commands are those RELION 3.1.3's GUI writes for InitialModel
(SGD) and 3D auto-refine with its defaults, read from its ``pipeline_jobs.cpp``; the one choice changed
is "Ref. map is on absolute greyscale?" = Yes, which its help asks for when the reference is RELION's own.
Auto-refine splits the particles into independent halves only under MPI (``relion_refine_mpi``: a leader
and one follower per half, as the GUI requires at least 3 MPI processes); its processes are confined to
the method's ``threads`` cores (``taskset``), so the two followers share what a one-core peer gets.
"""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

import mrcfile
import numpy as np
import starfile

from napari_cryospin.data.particles import load_particles
from napari_cryospin.diagnostics.polarity import measure_polarity

SGD_ITERATIONS = 50 + 200 + 50
"""InitialModel's initial, in-between and final SGD iterations (the GUI's defaults)."""


def background_mask(box: int) -> np.ndarray:
    """(box, box) bool: pixels outside 75 % of the box radius, where RELION normalises the background."""
    yy, xx = np.mgrid[:box, :box] - box // 2
    return np.hypot(yy, xx) > 0.75 * box / 2


def write_inputs(star: str | Path, out_dir: str | Path, batch: int = 1024) -> dict:
    """Write ``particles.mrcs`` (protein white, background-normalised) and ``particles.star`` for RELION.

    Returns a summary (also saved as ``relion_inputs.json``): the files, the measured polarity and the
    particle diameter (Å) given to RELION, 85 % of the box (a user's mask just inside the box).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    particles = load_particles(star)
    evidence = measure_polarity(particles)
    sign = -1.0 if evidence.detected == "dark" else 1.0
    n, box = len(particles), particles.box
    ring = background_mask(box)
    stack_path = out / "particles.mrcs"
    with mrcfile.new_mmap(stack_path, shape=(n, box, box), mrc_mode=2, overwrite=True) as mrc:
        for start in range(0, n, batch):
            images = sign * np.asarray(particles.stack[start : start + batch], np.float64)
            background = images[:, ring]
            mean = background.mean(axis=1)[:, None, None]
            sd = background.std(axis=1)[:, None, None]
            mrc.data[start : start + batch] = ((images - mean) / sd).astype(np.float32)
        mrc.voxel_size = particles.pixel_size
        mrc.set_image_stack()
    tables = starfile.read(star, always_dict=True)
    table = tables["particles"].copy()
    stack_name = stack_path.resolve()  # absolute: RELION reads image paths from its working folder
    table["rlnImageName"] = [f"{i + 1:06d}@{stack_name}" for i in range(n)]
    tables["particles"] = table
    starfile.write(tables, out / "particles.star", overwrite=True)
    summary = {
        "star": str(out / "particles.star"),
        "stack": str(stack_path),
        "polarity_detected": evidence.detected,
        "polarity_z": round(float(evidence.z), 1),
        "particle_diameter_A": round(0.85 * box * particles.pixel_size),
        "pixel_size": particles.pixel_size,
        "box": box,
    }
    (out / "relion_inputs.json").write_text(json.dumps(summary, indent=1))
    return summary


def initial_model_command(star: str, out_root: str, diameter_a: float, threads: int) -> list[str]:
    """``relion_refine`` as RELION 3.1.3's InitialModel job runs it with the GUI's defaults.

    Without CTF: the Debian build lacks ``ALLOW_CTF_IN_SGD``, so the GUI adds no ``--ctf`` there.
    """
    return [
        "relion_refine", "--o", out_root, "--sgd_ini_iter", "50", "--sgd_inbetween_iter", "200",
        "--sgd_fin_iter", "50", "--sgd_write_iter", "10", "--sgd_ini_resol", "35", "--sgd_fin_resol", "15",
        "--sgd_ini_subset", "100", "--sgd_fin_subset", "500", "--sgd", "--denovo_3dref", "--i", star,
        "--K", "1", "--sym", "C1", "--flatten_solvent", "--zero_mask", "--dont_combine_weights_via_disc",
        "--pool", "3", "--pad", "2", "--skip_gridding", "--particle_diameter", f"{diameter_a:g}",
        "--oversampling", "1", "--healpix_order", "1", "--offset_range", "6", "--offset_step", "4",
        "--j", str(threads),
    ]  # fmt: skip


def refine_command(star: str, reference: str, out_root: str, diameter_a: float, threads: int) -> list[str]:
    """``relion_refine_mpi`` as RELION 3.1.3's 3D auto-refine job runs it with the GUI's defaults
    (7.5° initial sampling, local searches from 1.8°, offsets 5 px in 1 px steps, 60 Å initial low-pass),
    three MPI processes on the first ``threads`` cores."""
    cores = f"0-{threads - 1}" if threads > 1 else "0"
    return [
        "taskset", "-c", cores, "mpirun", "--oversubscribe", "--bind-to", "none", "-n", "3",
        "relion_refine_mpi", "--o", out_root, "--auto_refine", "--split_random_halves", "--i", star,
        "--ref", reference, "--ini_high", "60", "--dont_combine_weights_via_disc", "--pool", "3",
        "--pad", "2", "--skip_gridding", "--ctf", "--particle_diameter", f"{diameter_a:g}",
        "--flatten_solvent", "--zero_mask", "--oversampling", "1", "--healpix_order", "2",
        "--auto_local_healpix_order", "4", "--offset_range", "5", "--offset_step", "2", "--sym", "C1",
        "--low_resol_join_halves", "40", "--norm", "--scale", "--j", str(threads),
    ]  # fmt: skip


def pipeline_script(inputs: dict, run_dir: Path, threads: int) -> Path:
    """A bash script running InitialModel, then Refine3D from its last map, into ``run_dir``; InitialModel
    is skipped when its last map is already there (a run continued after Refine3D stopped)."""
    initial = run_dir / "InitialModel"
    refine = run_dir / "Refine3D"
    diameter = inputs["particle_diameter_A"]
    reference = initial / f"run_it{SGD_ITERATIONS:03d}_class001.mrc"
    lines = [
        "set -euo pipefail",
        # OpenMPI refuses root (containers run as root) unless told twice
        'if [ "$(id -u)" = 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi',
        f"mkdir -p {shlex.quote(str(initial))} {shlex.quote(str(refine))}",
        f"[ -f {shlex.quote(str(reference))} ] || "
        + shlex.join(initial_model_command(inputs["star"], str(initial / "run"), diameter, threads)),
        shlex.join(refine_command(inputs["star"], str(reference), str(refine / "run"), diameter, threads)),
    ]
    script = run_dir / "relion.sh"
    script.write_text("\n".join(lines) + "\n")
    return script


def main(argv: list[str] | None = None) -> int:
    """Write the inputs for one STAR (see the module doc)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("star", type=Path)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    print(json.dumps(write_inputs(args.star, args.out), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
