"""Settings of one cryoSPIN run, shared by the CLI, the napari dock and checkpoints.

The dataclass is the one source of defaults (the CLI and the dock read them from its fields) and checks
every value when it is made, so a nonsense setting fails at once with one line naming the option.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from ..diagnostics.polarity import MODES
from ..geometry.symmetry import canonical
from ..model.noise import MODES as NOISE_MODES
from .setting import Setting, declared, labelled, setting

EXTEND_MODES = ("auto", "off")
"""``--explore-extend`` values: explore longer while the independent halves disagree, or exactly as set."""

REFINE_MODES = ("auto", "off")
"""``--local-refine`` values: refine the final poses locally (beyond the working box where it limits the map,
at it where it does not), or never."""

JUNK_MODES = ("auto", "keep")
"""``--junk`` values: leave the particles scored as junk out of the final maps, or keep every particle."""

DEVICES = ("auto", "cuda", "mps", "cpu")
"""Device names a run accepts (``cuda:N`` picks one GPU)."""

SYMMETRY_GROUPS = {
    "C1": "C1 (none)",
    **{f"C{n}": f"C{n}" for n in range(2, 13)},
    **{f"D{n}": f"D{n}" for n in range(2, 13)},
    **{g: g for g in ("T", "O", "I")},
}
"""``--symmetry`` values: the groups whose axes the run can find in its map (``symmetry_detect.py``)."""

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


def parse_switch(text: str) -> int | str | None:
    """``--switch`` text as ``RunConfig.switch``: 'auto', None for 'manual' (or 'none'), else an epoch."""
    if text in ("auto", "manual", "none"):
        return None if text in ("manual", "none") else "auto"
    try:
        return int(text)
    except ValueError as exc:
        raise ValueError("--switch takes an epoch number, 'auto' or 'manual'") from exc


def check_declared(s: Setting, value: object) -> None:
    """Check ``value`` against what ``s`` declares: a path, a bool, an integer range, a box or a choice."""
    if s.widget in ("file", "folder") and (not isinstance(value, str) or not value.strip()):
        raise ValueError(f"{s.name} must be a path, got {value!r}. Fix: name a {s.name} file or folder.")
    if isinstance(s.default, bool) and not isinstance(value, bool):
        raise ValueError(f"{option(s.name)} must be True or False, got {value!r}. Fix: use a bool.")
    if s.low is not None and s.even:
        check_box(s.name, value, s.low)
    elif s.low is not None:
        check_int(s.name, value, s.low, allow_none=s.default is None)
    if s.choices is not None and value not in s.choices:
        raise ValueError(
            f"{option(s.name)} must be one of {', '.join(s.choices)}, got {value!r}. Fix: choose one of them."
        )


@dataclass
class RunConfig:
    """Everything that defines a reconstruction; defaults suit a laptop CPU at box 64.

    Each field declares itself once (``setting(...)``: help, CLI flag, range or choices, dock row); the
    CLI flags and the dock's fields are made from those declarations.
    ``explore_epochs`` of global pose search come first (0: auto-encoding starts from the blob, as in
    the paper). ``switch`` is an epoch number (switch at its start), ``"auto"`` (the criterion in
    ``engine/switch.py``) or ``None`` (only when commanded). ``polarity`` is ``"auto"`` (decided from
    the data, see ``diagnostics/polarity.py``), ``"dark"`` or ``"white"`` (protein brighter than background).
    ``noise_model`` is ``"auto"`` (noise power per shell and optics group, ``model/noise.py``) or
    ``"white"`` (the unweighted residual). ``junk`` ``"auto"`` leaves the particles scored as junk
    (``engine/junk.py``) out of the final maps; ``"keep"`` scores them but keeps every particle. ``box``
    None lets ``engine/working_box.py`` choose the working box. ``explore_subset`` N > 0 explores and
    auto-encodes N particles only and poses the others with the encoder (``engine/amortized.py``); 0: all.
    ``symmetry`` is the point group imposed from the switch on, in the frame its axes have in the C1 map
    (``engine/symmetry_frame.py``); imposed from exploration's first, blob-like maps a group settles on a
    wrong map whose halves still agree (docs/method.md, "Symmetry"). Every run also detects the group.
    ``overwrite`` lets a fresh run replace the results of another run in ``out`` (see ``run_folder.py``);
    ``resume`` continues the run there.
    """

    particles: str = setting(
        help="RELION .star, cryoSPARC .cs or .mrcs stack", flag="particles", dock="main", widget="file"
    )
    out: str = setting(
        help="folder for volume.mrc, poses.star, checkpoint.pt, … (another run's results there are "
        "replaced only when asked to)",
        dock="main",
        label="output folder",
        widget="folder",
    )
    device: str = setting(
        "auto",
        help="auto (CUDA, else MPS, else CPU; default), cuda, cuda:N, mps or cpu",
        dock="main",
        widget="device",
    )
    heads: int = setting(
        7,
        help="encoder heads M: pose candidates per particle in auto-encoding (default %(default)s)",
        low=1,
        most=64,
        dock="main",
    )
    epochs: int = setting(20, help="epochs in all (default %(default)s)", low=1, most=10_000, dock="main")
    explore_epochs: int = setting(
        8,
        help="epochs of global pose search before auto-encoding (default %(default)s; 0 starts from a blob)",
        low=0,
        most=10_000,
        dock="main",
        label="exploration epochs",
    )
    explore_extend: str = setting(
        "auto",
        help="auto (default): while the independently explored halves still disagree at the end of "
        "--explore-epochs, explore on, 2 epochs at a time, up to twice as many (the run grows by as much); "
        "off: exactly --explore-epochs",
        choices=labelled(EXTEND_MODES, ("until the halves agree (auto)", "exactly as set")),
        dock="advanced",
        label="longer exploration",
    )
    switch: int | str | None = setting(
        "auto",
        help="when to leave auto-encoding: 'auto' (default), at an epoch number, or 'manual' (only when "
        "told to)",
        parse=parse_switch,
        most=10_000,
        dock="main",
        widget="switch",
    )
    box: int | None = setting(
        None,
        help="work on the images Fourier-cropped to this box (even); default: the stack's box up to 64 on a "
        "CPU, 128 on a GPU. The final maps are always also made at the stack's box and pixel size",
        low=MIN_BOX,
        even=True,
        most=1024,
        dock="advanced",
    )
    encoder_box: int | None = setting(
        None,
        help="image size the encoder sees (even; default: 32 on a CPU, the full box on a GPU)",
        low=8,
        even=True,
    )
    encoder_width: int | None = setting(
        None, help="channels of the first VGG block (default: 16 on a CPU, 32 on a GPU)", low=1
    )
    batch_size: int = setting(
        64, help="particles per step (default %(default)s)", low=1, most=4096, dock="advanced"
    )
    seed: int = setting(0, help="random seed (default %(default)s)", low=0)
    half_maps: bool = setting(
        True,
        help="write the half maps half_a.mrc / half_b.mrc (gold-standard FSC); --no-half-maps skips them",
        flag="--no-half-maps",
        dock="advanced",
        label="reconstruct half maps (gold-standard FSC)",
    )
    resume: bool = setting(False, help="continue the run in OUT from its checkpoint.pt", group="again")
    overwrite: bool = setting(
        False, help="remove the results of a previous run in OUT, then start", group="again"
    )
    max_particles: int | None = setting(None, help="use only the first N particles", low=1)
    snapshot_interval_s: float = setting(
        0.5, help="seconds between the snapshots a viewer is sent (set in code)", flag=None
    )
    eval_every: int | None = setting(
        None, help="epochs between evaluations (set in code; default: epochs / 8)", flag=None, low=1
    )
    polarity: str = setting(
        "auto",
        help="protein darker (dark) or brighter (white) than background; auto (default): from the data",
        choices=labelled(MODES, ("auto (from the data)", "dark protein", "white protein")),
        dock="advanced",
    )
    noise_model: str = setting(
        "auto",
        help="auto (default): weigh frequencies by the noise power measured per shell and optics group in "
        "the images' background; white: unweighted",
        choices=labelled(NOISE_MODES, ("measured per shell (auto)", "white")),
        dock="advanced",
    )
    junk: str = setting(
        "auto",
        help="auto (default): leave particles scored as junk out of the final maps (all are scored in "
        "poses.star; the kept ones listed in particles_kept.star); keep: use every particle",
        choices=labelled(JUNK_MODES, ("leave out of the map (auto)", "keep every particle")),
        dock="advanced",
    )
    local_refine: str = setting(
        "auto",
        help="auto (default): refine every pose locally before the final maps, each half against its own "
        "map without the particle's subset: at a box that grows with the resolution when the full-size half "
        "maps agree nearly out to the working box's Nyquist, else at the working box; then the particles "
        "whose mate check leaves their pose in doubt are searched over every rotation; off: keep "
        "auto-decoding's poses",
        choices=labelled(REFINE_MODES, ("refine the final poses (auto)", "off")),
        dock="advanced",
    )
    explore_subset: int = setting(
        0,
        help="explore and auto-encode only N random particles (≥ 100), pose the others with the encoder and "
        "grid-search those it is unsure about; for large sets (default %(default)s: explore every particle)",
        low=0,
    )
    symmetry: str = setting(
        "C1",
        help="point group to impose (C1 none, Cn, Dn with n ≤ 12, T, O, I; RELION's orientations): the "
        "run explores and auto-encodes in C1, finds the group's axes in its map at the switch and imposes it "
        "from there on, in the group's frame (default %(default)s)",
        choices=SYMMETRY_GROUPS,
        dock="advanced",
    )

    def __post_init__(self) -> None:
        self.symmetry = canonical(self.symmetry)  # c5 → C5; ValueError naming the groups for a bad name
        self.validate()

    def validate(self) -> None:
        """Check every setting; ValueError with one line naming the option and its allowed values."""
        for s in declared(RunConfig):
            check_declared(s, getattr(self, s.name))
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
        check_device(self.device)
        if not (self.switch is None or self.switch == "auto" or (_is_int(self.switch) and self.switch >= 0)):
            raise ValueError(
                f"--switch must be an epoch number ≥ 0, 'auto' or 'manual', got {self.switch!r}. "
                "Fix: give --switch auto (the default), manual, or an epoch such as 10."
            )
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


def run_settings() -> list[Setting]:
    """RunConfig's declared settings, in field order: what the CLI flags and the dock's fields are made of."""
    return declared(RunConfig)


def config_defaults() -> dict:
    """Each RunConfig field's default (fields without one left out): the CLI's and the dock's defaults."""
    return {s.name: s.default for s in run_settings() if not s.required}
