"""The noise model and the junk score measured against a known-pose map, without an ab-initio run.

A map is built from the first ``--map`` particles at their true poses (each noise model builds its own,
as exploration would); the last ``--test`` images are then searched on exploration's fine grid at its top
radius. Reported per noise model: the share of particles within 15° of their true rotation, median and
mean error; and, when the truth marks junk, the ROC AUC of the junk score (``engine/junk.py``) of the
searched images at their best grid pose.

    python bench/noise_and_junk.py sim/ --map 1500 --test 300
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from napari_cryospin.data.particles import load_particles
from napari_cryospin.engine.config import RunConfig
from napari_cryospin.engine.engine import Engine
from napari_cryospin.engine.junk import correlation_z, fit_terms
from napari_cryospin.metrics.junk_auc import roc_auc, truth_junk
from napari_cryospin.model.search import SoftAssignment, grid_search, insert_weighted
from napari_cryospin.physics.reconstruction import solve_map


def known_map_engine(data: Path, mode: str, n_map: int, radius: float, junk: np.ndarray | None) -> Engine:
    """An engine on ``data`` with the Wiener map of its first non-junk particles at their true poses."""
    truth = load_particles(data / "truth.star")
    out = tempfile.mkdtemp(prefix=f"noise_{mode}_")
    eng = Engine(RunConfig(particles=str(data / "particles.star"), out=out, device="cpu", noise_model=mode))
    eng._build()
    idx = np.arange(n_map)
    if junk is not None:
        idx = idx[~junk[:n_map]]
    acc = None
    for start in range(0, len(idx), 250):
        part = idx[start : start + 250]
        ones = torch.ones(len(part), 1)
        poses = SoftAssignment(
            torch.as_tensor(truth.rotations[part], dtype=torch.float32)[:, None],
            torch.as_tensor(truth.shifts[part], dtype=torch.float32)[:, None],
            ones,
            ones,
        )
        new = insert_weighted(eng.model.batch(part), poses, eng.model.disk, eng.model.disk.count(radius))
        acc = new if acc is None else acc + new
    for copy in range(eng.model.volume.copies):
        eng.model.volume.set_from_real_space(torch.from_numpy(solve_map(acc)), copy=copy)
    return eng


def main() -> None:
    """Run both noise models and print their accuracy (and junk AUC)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="a cryospin simulate folder")
    parser.add_argument("--map", type=int, default=1500, help="particles in the known-pose map")
    parser.add_argument("--test", type=int, default=300, help="last images searched")
    parser.add_argument("--radius", type=float, default=13.0, help="cycles per box (exploration's top)")
    args = parser.parse_args()
    truth = load_particles(args.data / "truth.star")
    junk = truth_junk(truth.table)
    test = np.arange(len(truth) - args.test, len(truth))
    for mode in ("auto", "white"):
        eng = known_map_engine(args.data, mode, args.map, args.radius, junk)
        n = eng.model.disk.count(args.radius)
        with torch.no_grad():
            for start in range(0, len(test), 100):
                part = test[start : start + 100]
                m = eng.model
                found = grid_search(
                    m.volume, m.batch(part), m.grids[-1], torch.zeros(len(part), 2), m.offsets, m.disk, n, 1
                )
                eng.model.best_rot[part], eng.model.best_shift[part] = (
                    found.rotations[:, 0],
                    found.shifts[:, 0],
                )
        rot = eng.model.best_rot[test].double().numpy()
        cos = (np.einsum("nij,nij->n", rot, truth.rotations[test]) - 1) / 2
        err = np.degrees(np.arccos(np.clip(cos, -1, 1)))
        real = np.ones(len(test), bool) if junk is None else ~junk[test]
        line = (
            f"{mode:5s}: {real.sum()} particles, within 15° {np.mean(err[real] < 15):.3f}, median "
            f"{np.median(err[real]):.1f}°, mean {err[real].mean():.1f}°"
        )
        if junk is not None and junk[test].any():
            terms = fit_terms(
                eng.model, n
            )  # every image; only the searched ones have a pose that means anything
            z = correlation_z(terms.correlation()[test])
            line += f"; junk AUC {roc_auc(z, junk[test]):.3f} (z > 2: junk {np.mean(z[junk[test]] > 2):.2f}"
            line += f", particles {np.mean(z[~junk[test]] > 2):.3f})"
        print(line, flush=True)


if __name__ == "__main__":
    main()
