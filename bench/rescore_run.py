"""Copy a run folder written before poses.star had per-particle scores, and add them to the copy.

The copy gets the engine's head, loss and confidence columns (``engine/particle_scores.py``), computed
from its checkpoint as a finished run of this version writes them; the original folder is only read.

    python bench/rescore_run.py /work/runs/ribo_shared /tmp/ribo_scored
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import torch

from napari_cryospin.data.poses_out import write_poses_star
from napari_cryospin.engine.checkpoint import load_checkpoint
from napari_cryospin.engine.config import RunConfig
from napari_cryospin.engine.engine import Engine
from napari_cryospin.engine.particle_scores import particle_scores
from napari_cryospin.engine.run_folder import write_run_record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="finished run folder (read only)")
    parser.add_argument("copy", type=Path, help="new folder for the scored copy (must not exist)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    shutil.copytree(args.run, args.copy)
    state = load_checkpoint(args.copy)
    settings = dict(state["config"], out=str(args.copy), resume=True, overwrite=False)
    engine = Engine(RunConfig.from_dict(settings))
    engine._build()
    engine._restore(engine._resume_state)
    rot, shift = engine.model.current_poses()
    write_poses_star(
        args.copy / "poses.star", engine.model.particles, rot, shift, particle_scores(engine.model)
    )
    write_run_record(args.copy, "reconstruct", engine.config.to_dict(), engine.identity)
    print(f"{args.copy}: scores added for {engine.model.n} particles in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
