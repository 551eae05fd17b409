"""Does the shown view posterior agree with the pose? Rank of the pose's view pixel, on a finished run.

For N particles of a run folder (checkpoint.pt + its inputs; nothing is written there), compute the view
posterior the napari dock shows (``SavedRun.particle_view``) and find where the HEALPix pixel holding the
particle's saved pose ranks: the mode (rank 1) or among the top 3. ``--baseline`` also scores the plain
grid posterior (nside 8, 24 in-plane angles, marginalised), which is what the dock showed before;
``--no-pose-anchor`` refines from the encoder heads alone (the saved and kept poses are not sampled).
``--results FILE`` keeps each particle's row as soon as it is scored and skips the rows FILE already
holds, and ``--part i/n`` runs the i-th of n slices of the particles, so a long check can run as short
jobs; the summary covers every row in FILE.

    python bench/posterior_check.py /work/runs/ribo_final --particles 50 [--baseline]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from napari_cryospin.engine.posterior import view_pixels
from napari_cryospin.engine.saved_run import SavedRun


def pose_rank(log_posterior: np.ndarray, pose: np.ndarray) -> int:
    """1-based rank of the pixel holding the pose's view (1 = the mode; ties count in the pose's favour)."""
    nside = int(np.sqrt(len(log_posterior) / 12))
    pixel = int(view_pixels(pose[None], nside)[0])
    return int((log_posterior > log_posterior[pixel]).sum()) + 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="run folder holding checkpoint.pt (read only)")
    parser.add_argument("--particles", type=int, default=50, help="how many particles (spread over the set)")
    parser.add_argument("--baseline", action="store_true", help="also score the plain grid posterior")
    parser.add_argument("--no-pose-anchor", action="store_true", help="refine from the heads alone")
    parser.add_argument("--part", default="1/1", help="i/n: run the i-th of n slices of the particles")
    parser.add_argument("--results", type=Path, help="JSON file the rows are added to (and summarised from)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    part, parts = (int(v) for v in args.part.split("/"))
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    run = SavedRun(args.run)
    print(
        f"{args.run}: {run.n} particles, stage {run.model.stage.value}, {run.model.n_points()} frequencies, "
        f"loaded in {time.perf_counter() - t0:.1f} s"
    )
    picks = np.array_split(np.linspace(0, run.n - 1, args.particles).round().astype(int), parts)[part - 1]
    methods = ["refined" if not args.no_pose_anchor else "heads only"] + ["grid"] * args.baseline
    rows = json.loads(args.results.read_text()) if args.results and args.results.exists() else []
    done = {(r["particle"], r["method"]) for r in rows}
    print(f"{'particle':>8} {'posterior':>10} {'rank':>5} {'seconds':>8}")
    for index in picks:
        for method in methods:
            if (int(index), method) in done:
                continue
            t = time.perf_counter()
            view = run.particle_view(int(index), refined=method != "grid", pose_anchor=method == "refined")
            rank = pose_rank(view.log_posterior, view.candidates[view.winner])
            rows.append(
                {"particle": int(index), "method": method, "rank": rank, "seconds": time.perf_counter() - t}
            )
            print(f"{index:>8d} {method:>10} {rank:>5d} {rows[-1]['seconds']:>8.1f}", flush=True)
            if args.results is not None:  # after every particle, so that a stopped part keeps its rows
                args.results.write_text(json.dumps(rows, indent=1))
    print()
    print(f"{'posterior':>10} {'particles':>9} {'mode':>7} {'top 3':>7} {'median s':>9}")
    for method in dict.fromkeys(r["method"] for r in rows):
        r = np.asarray([x["rank"] for x in rows if x["method"] == method])
        s = np.median([x["seconds"] for x in rows if x["method"] == method])
        print(f"{method:>10} {len(r):>9d} {np.mean(r == 1):>7.0%} {np.mean(r <= 3):>7.0%} {s:>9.1f}")


if __name__ == "__main__":
    main()
