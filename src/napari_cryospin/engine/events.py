"""What the engine tells its consumers (snapshots) and what they may tell it (commands).

The CLI and the napari dock read the same :class:`Snapshot` stream; a consumer sends a
:class:`Command` as the value of the generator's ``yield`` (``gen.send(cmd)``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np


class Stage(StrEnum):
    """Where a run is: global exploration, amortized encoding, per-particle decoding, or finished."""

    EXPLORING = "exploring"
    ENCODING = "auto-encoding"
    DECODING = "auto-decoding"
    DONE = "done"


@dataclass
class Command:
    """A request to the running engine.

    ``kind`` is ``"switch"`` (go to auto-decoding at the next step), ``"stop"`` (save a checkpoint and
    end) or ``"particle"`` (show the pose candidates of particle ``value`` in later snapshots).
    """

    kind: str
    value: int | None = None


@dataclass
class SkyPatch:
    """Fine HEALPix pixels around the posterior's mode, for the zoomed (gnomonic) view."""

    nside: int  # fine HEALPix resolution (RING)
    pixels: np.ndarray  # (K,) fine pixels that were sampled
    log_posterior: np.ndarray  # (K,) best log posterior in each pixel, in the units of the coarse map
    mode: np.ndarray  # (3,) unit view direction of the best sampled rotation


@dataclass
class ParticleView:
    """One particle's pose picture: its image, each head's candidate and the winner."""

    index: int
    image: np.ndarray  # (L, L) the (downsampled) particle image
    projection: np.ndarray  # (L, L) CTF-modulated projection at the current best pose
    candidates: np.ndarray  # (M, 3, 3) each head's rotation (encoding) or (1, 3, 3) (decoding)
    candidate_losses: np.ndarray  # (M,) per-candidate loss, lower is better
    winner: int  # index into candidates
    path: np.ndarray  # (T, 3, 3) the particle's pose at past decoding steps (empty in encoding)
    log_posterior: np.ndarray | None = None  # (12·nside²,) HEALPix (RING) log posterior of view direction
    labels: list[str] = field(default_factory=list)  # one per candidate ("head 1", "search", …)
    zoom: SkyPatch | None = None  # fine samples around the mode (with ``log_posterior``)
    mates: np.ndarray | None = None  # (G − 1, 3, 3) the winner's symmetry mates g·R (imposed/detected group)
    mates_group: str = ""  # that group's name ("" when none)


@dataclass
class Snapshot:
    """A throttled progress report of a run."""

    epoch: int  # 0-based epoch being run
    step: int  # global optimisation step
    stage: Stage
    progress: float  # 0..1 of the whole run
    elapsed_s: float
    images_per_s: float
    loss: float  # running mean of the training loss this epoch
    voxel_size: float
    volume: np.ndarray | None = None  # (D, D, D) real-space map, when it changed since the last one
    head_fractions: np.ndarray | None = None  # (M + 1,) share of particles held by each head, then search
    particle: ParticleView | None = None
    resolution: float | None = None  # Å, half-map FSC 0.143 (or None before it is computed)
    fsc: tuple[np.ndarray, np.ndarray] | None = None  # (frequency 1/Å, FSC) of the last evaluation
    fsc_curves: dict[str, tuple[np.ndarray, np.ndarray]] | None = None  # the final maps' FSCs, by label
    history: list[dict] = field(default_factory=list)  # per-epoch records as in metrics.json
    message: str = ""  # a human-readable line for status bars
    polarity: str = ""  # how the images' polarity was decided, e.g. "protein white, inverted (auto, z -54)"
    halves: str = ""  # whether the independently explored halves agree, once they are aligned
    epochs: int = 0  # the run's epochs in all (an exploration extended while the halves disagreed adds some)
