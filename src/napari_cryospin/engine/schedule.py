"""Learning rates, frequency masks and sizes of a run, derived from the box and the config.

Rates follow the paper (encoder 1e-4, decoder 0.05 → 0.02 at the switch, poses 0.05); the frequency
disk grows during auto-encoding (coarse poses first) and covers all but the corner at decoding. Every
value is a fraction of the box or of Nyquist, never an absolute resolution, so nothing is tuned to one
dataset.
"""

from __future__ import annotations

import torch

from .config import RunConfig
from .events import Stage


class Schedule:
    """Per-run constants and the epoch-dependent low-pass radius."""

    encoder_lr = 1e-4
    volume_lr_encoding = 0.05
    volume_lr_decoding = 0.02
    rotation_lr = 0.05
    shift_lr = 0.1
    pose_steps = 5
    posterior_nside = 8
    start_fraction = 0.3  # of the largest radius, at epoch 0
    full_at_fraction = 0.5  # of the epochs: where the encoding radius reaches its top

    def __init__(self, box: int, config: RunConfig, device: str = "cpu"):
        self.box = box
        self.epochs = config.epochs
        cpu = device == "cpu"
        self.encoder_box = min(config.encoder_box or (32 if cpu else box), box)
        self.encoder_width = config.encoder_width or (16 if cpu else 32)
        self.max_shift = box / 8
        self.shift_search = box / 16  # pixels searched around each head's shift (1-px grid)
        self.max_radius = box / 2 - 1

    def radius(self, stage: Stage, epoch: int) -> float:
        """Low-pass radius in cycles per box of the likelihood at ``epoch``."""
        if stage != Stage.ENCODING:
            return self.max_radius
        ramp = min(1.0, epoch / max(1.0, self.full_at_fraction * self.epochs))
        top = 0.75 * self.max_radius
        return self.start_fraction * self.max_radius + ramp * (top - self.start_fraction * self.max_radius)

    def points(self, disk, stage: Stage, epoch: int) -> int:
        """Number of disk points inside :meth:`radius`."""
        return disk.count(self.radius(stage, epoch))

    def encoder_images(self, images: torch.Tensor) -> torch.Tensor:
        """The encoder's view of a batch: Fourier-cropped to ``encoder_box``."""
        if self.encoder_box == self.box:
            return images
        from ..physics.fourier import fftn_centered, ifftn_centered

        lo = self.box // 2 - self.encoder_box // 2
        f = fftn_centered(images, 2)[..., lo : lo + self.encoder_box, lo : lo + self.encoder_box]
        return ifftn_centered(f, 2).real * (self.encoder_box / self.box)
