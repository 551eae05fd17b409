"""Settings of one cryoSPIN run, shared by the CLI, the napari dock and checkpoints.

The dataclass is the one source of defaults (the CLI and the dock read them from its fields) and checks
every value when it is made, so a nonsense setting fails at once with one line naming the option.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path

from ..geometry.symmetry import canonical
from ..model.noise import MODES as NOISE_MODES
from ..polarity import MODES

JUNK_MODES = ("auto", "keep")
"""``--junk`` values: leave the particles scored as junk out of the final maps, or keep every particle."""

DEVICES = ("auto", "cuda", "mps", "cpu")
"""Device names a run accepts (``cuda:N`` picks one GPU)."""

MIN_SUBSET = 100
"""Smallest explored subset (``explore_subset``): the run's own minimum, two half maps of ≥ 50 particles."""

MIN_BOX = 16
"""Smallest box: below it the shift search (box/16 px) and the first exploration radius collapse."""


def option(name: str) -> str:
    """The command-line spelling of a RunConfig field (``batch_size`` → ``--batch-size``)."""
    return "--" + name.replace("_", "-")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_int(name: str, value: object, low: int, allow_none: bool = False) -> None:
    """Raise ValueError (one line naming the option and the range) unless ``value`` is an int ≥ ``low``."""
    if value is None and allow_none:
        return
    if not _is_int(value) or value < low:
        unset = " (or left out)" if allow_none else ""
        raise ValueError(
            f"{option(name)} must be an integer ≥ {low}{unset}, got {value!r}. "
            f"Fix: give {option(name)} {low} or more."
        )


def check_box(name: str, value: object, low: int = MIN_BOX) -> None:
    """Raise ValueError unless ``value`` is None or an even integer ≥ ``low`` (pixels)."""
    if value is None:
        return
    if not _is_int(value) or value < low or value % 2:
        raise ValueError(
            f"{option(name)} must be an even number of pixels ≥ {low}, got {value!r}. "
            f"Fix: give an even {option(name)} of {low} or more, or leave it out."
        )


def check_device(value: object, name: str = "device") -> None:
    """Raise ValueError unless ``value`` is auto, cuda, cuda:N, mps or cpu (availability is checked later)."""
    base, _, index = str(value).partition(":")
    bad_index = bool(index) and (base != "cuda" or not index.isdigit())
    if not isinstance(value, str) or base not in DEVICES or bad_index:
        raise ValueError(
            f"{option(name)} must be one of auto, cuda, cuda:N, mps, cpu; got {value!r}. "
            "Fix: use auto (the best available) or name one of those."
        )


@dataclass
class RunConfig:
    """Everything that defines a reconstruction; defaults suit a laptop CPU at box 64.

    ``explore_epochs`` of global pose search come first (0: auto-encoding starts from the blob, as in
    the paper). ``switch`` is an epoch number (switch at its start), ``"auto"`` (the criterion in
    ``engine/switch.py``) or ``None`` (only when commanded). ``polarity`` is ``"auto"`` (decided from
    the data, see ``polarity.py``), ``"dark"`` or ``"white"`` (protein brighter than background).
    ``noise_model`` is ``"auto"`` (noise power per shell and optics group, ``model/noise.py``) or
    ``"white"`` (the unweighted residual). ``junk`` ``"auto"`` leaves the particles scored as junk
    (``engine/junk.py``) out of the final maps; ``"keep"`` scores them but keeps every particle. ``box``
    None lets ``engine/working_box.py`` choose the working box. ``explore_subset`` N > 0 explores and
    auto-encodes N particles only and poses the others with the encoder (``engine/amortized.py``); 0: all.
    ``symmetry`` is the point group imposed on every map; only C1 (none) is accepted for now: imposed
    from exploration's first, blob-like maps a group settles on a wrong map whose halves still agree
    (docs/method.md, "Symmetry"). The run detects the group instead (``metrics/symmetry_detect.py``).
    ``overwrite`` lets a fresh run replace the results of another run in ``out`` (see ``run_folder.py``);
    ``resume`` continues the run there.
    """

    particles: str
    out: str
    heads: int = 7
    epochs: int = 20
    switch: int | str | None = "auto"
    explore_epochs: int = 8
    device: str = "auto"
    box: int | None = None
    encoder_box: int | None = None  # None: 32 on a CPU, the full box on a GPU
    encoder_width: int | None = None  # None: 16 on a CPU, 32 on a GPU
    batch_size: int = 64
    seed: int = 0
    half_maps: bool = True
    resume: bool = False
    overwrite: bool = False
    max_particles: int | None = None
    snapshot_interval_s: float = 0.5
    eval_every: int | None = None
    polarity: str = "auto"
    noise_model: str = "auto"
    junk: str = "auto"
    explore_subset: int = 0
    symmetry: str = "C1"

    def __post_init__(self) -> None:
        self.validate()
        self.symmetry = canonical(self.symmetry)

    def validate(self) -> None:
        """Check every setting; ValueError with one line naming the option and its allowed values."""
        for name in ("particles", "out"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"{name} must be a path, got {value!r}. Fix: name a {name} file or folder.")
        check_int("heads", self.heads, 1)
        check_int("epochs", self.epochs, 1)
        check_int("explore_epochs", self.explore_epochs, 0)
        check_int("batch_size", self.batch_size, 1)
        check_int("seed", self.seed, 0)
        check_int("max_particles", self.max_particles, 1, allow_none=True)
        check_int("encoder_width", self.encoder_width, 1, allow_none=True)
        check_int("eval_every", self.eval_every, 1, allow_none=True)
        check_int("explore_subset", self.explore_subset, 0)
        if 0 < self.explore_subset < MIN_SUBSET:
            raise ValueError(
                f"--explore-subset must be 0 (explore every particle) or at least {MIN_SUBSET}, got "
                f"{self.explore_subset}. Fix: give 0 or {MIN_SUBSET} or more."
            )
        if self.explore_subset and not self.explore_epochs:
            raise ValueError(
                "--explore-subset needs exploration (--explore-epochs 0 was given): the encoder learns from "
                "the subset's grid-search poses. Fix: give --explore-epochs 1 or more, or --explore-subset 0."
            )
        if canonical(self.symmetry) != "C1":  # canonical: ValueError naming the accepted groups
            raise ValueError(
                f"symmetry {self.symmetry}: imposing a point group during ab initio is not available yet "
                "(imposed from the first maps it settles on a wrong map whose halves still agree). Fix: run "
                "C1: the run names the group its map shows, and `cryospin backproject --symmetry` imposes "
                "it on poses in that group's frame."
            )
        check_box("box", self.box)
        check_box("encoder_box", self.encoder_box, 8)
        check_device(self.device)
        if self.polarity not in MODES:
            raise ValueError(
                f"--polarity must be one of {', '.join(MODES)}, got {self.polarity!r}. Fix: choose one."
            )
        if self.noise_model not in NOISE_MODES:
            raise ValueError(
                f"--noise-model must be one of {', '.join(NOISE_MODES)}, got {self.noise_model!r}. "
                "Fix: choose auto (measured per shell and optics group) or white."
            )
        if self.junk not in JUNK_MODES:
            raise ValueError(
                f"--junk must be one of {', '.join(JUNK_MODES)}, got {self.junk!r}. "
                "Fix: choose auto (leave junk out of the maps) or keep."
            )
        if not (self.switch is None or self.switch == "auto" or (_is_int(self.switch) and self.switch >= 0)):
            raise ValueError(
                f"--switch must be an epoch number ≥ 0, 'auto' or 'manual', got {self.switch!r}. "
                "Fix: give --switch auto (the default), manual, or an epoch such as 10."
            )
        for name in ("half_maps", "resume", "overwrite"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise ValueError(f"{option(name)} must be True or False, got {value!r}. Fix: use a bool.")
        if self.resume and self.overwrite:
            raise ValueError("--resume and --overwrite exclude each other. Fix: give only one of them.")
        interval = self.snapshot_interval_s
        if not isinstance(interval, (int, float)) or not math.isfinite(interval) or interval < 0:
            raise ValueError(
                f"snapshot_interval_s must be a number of seconds ≥ 0, got {interval!r}. Fix: use e.g. 0.5."
            )

    def to_dict(self) -> dict:
        """Plain-JSON form, for checkpoints and metrics.json."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> RunConfig:
        """Inverse of :meth:`to_dict`, ignoring unknown keys from other versions."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    @property
    def out_dir(self) -> Path:
        """The output folder as a path."""
        return Path(self.out)


def config_defaults() -> dict:
    """Each RunConfig field's default (fields without one left out): the CLI's and the dock's defaults."""
    return {f.name: f.default for f in fields(RunConfig) if f.default is not MISSING}
