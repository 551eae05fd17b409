"""Settings of one cryoSPIN run, shared by the CLI, the napari dock and checkpoints."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path

from ..polarity import MODES


@dataclass
class RunConfig:
    """Everything that defines a reconstruction; defaults suit a laptop CPU at box 64.

    ``explore_epochs`` of global pose search come first (0: auto-encoding starts from the blob, as in
    the paper). ``switch`` is an epoch number (switch at its start), ``"auto"`` (the criterion in
    ``engine/switch.py``) or ``None`` (only when commanded). ``polarity`` is ``"auto"`` (decided from
    the data, see ``polarity.py``), ``"dark"`` or ``"white"`` (protein brighter than background).
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
    max_particles: int | None = None
    snapshot_interval_s: float = 0.5
    eval_every: int | None = None
    polarity: str = "auto"

    def __post_init__(self) -> None:
        if self.polarity not in MODES:
            raise ValueError(
                f"polarity must be one of {', '.join(MODES)}, got {self.polarity!r}. Fix: choose one of them."
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
