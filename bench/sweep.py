"""One cryoSPIN run with engine constants overridden, scored against the truth in one line (for sweeps).

Usage: ``python bench/sweep.py DATASET OUT [NAME=VALUE ...] [--star FILE]``. ``NAME`` is a ``RunConfig``
field (``epochs=20``) or a ``Schedule`` constant (``explore_top_k=16``); values are Python literals.
DATASET holds ``particles.star`` (or ``--star``) and its truth (see ``scoring.truth_paths``). Prints and
writes ``OUT/score.json``: median / mean rotation error after global alignment and hand, median shift
error, FSC 0.5 of the poses brought into the truth's frame (backprojected) and of the true poses (the
ceiling), the run's own half-map resolution next to the FSC 0.143 against the truth, its validity
verdict, and wall time.
"""

from __future__ import annotations

import ast
import json
import sys
import time
from pathlib import Path

import numpy as np

from napari_cryospin.data.particles import load_particles
from napari_cryospin.engine.config import RunConfig
from napari_cryospin.engine.engine import Engine
from napari_cryospin.engine.events import Stage
from napari_cryospin.engine.schedule import Schedule
from scoring import ceiling, load_truth, score_poses


def _overrides(pairs: list[str]) -> tuple[dict, dict]:
    config, schedule = {}, {}
    fields = set(RunConfig.__dataclass_fields__)
    for pair in pairs:
        name, _, text = pair.partition("=")
        value = ast.literal_eval(text)
        if name in fields:
            config[name] = value
        elif hasattr(Schedule, name):
            schedule[name] = value
        else:
            raise SystemExit(f"{name}: neither a RunConfig field nor a Schedule constant")
    return config, schedule


def score(dataset: Path, out: Path) -> dict:
    """Accuracy of the run in ``out`` against the truth of ``dataset``, plus what the run reported."""
    truth = load_truth(dataset)
    est = load_particles(out / "poses.star")
    n = len(est)
    result = score_poses(est.rotations, est.shifts, truth, rows=np.arange(n))
    ceiling05, _ = ceiling(truth, n)
    final = json.loads((out / "metrics.json").read_text())["final"]
    return {
        "rot_median": result.rot_median,
        "rot_mean": result.rot_mean,
        "within_10deg": float(np.mean(result.alignment.errors_deg < 10)),
        "shift_median": result.shift_median,
        "fsc05": result.fsc05,
        "fsc0143_truth": result.fsc0143,
        "ceiling05": ceiling05,
        "reported0143": final["resolution"],
        "validity": final.get("validity"),
        "agreement": (final.get("halves_agreement") or {}).get("summary"),
    }


def main(argv: list[str]) -> int:
    """Run, score, print one JSON line."""
    star = None
    if "--star" in argv:
        i = argv.index("--star")
        star, argv = argv[i + 1], argv[:i] + argv[i + 2 :]
    dataset, out, pairs = Path(argv[0]), Path(argv[1]), argv[2:]
    config, schedule = _overrides(pairs)
    for name, value in schedule.items():
        setattr(Schedule, name, value)
    cfg = RunConfig(
        particles=str(dataset / (star or "particles.star")), out=str(out), encoder_box=32, encoder_width=16
    )
    for name, value in config.items():
        setattr(cfg, name, value)
    engine = Engine(cfg)
    t0 = time.perf_counter()
    stages = {}
    for snap in engine.run():
        stages.setdefault(snap.stage.value, time.perf_counter() - t0)
        if snap.stage == Stage.DONE:
            message = snap.message
    result = {"name": out.name, "overrides": pairs, "wall_s": time.perf_counter() - t0, "stages": stages}
    result.update(score(dataset, out))
    result["message"] = message
    (out / "score.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
