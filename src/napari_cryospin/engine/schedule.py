"""Learning rates, frequency masks and sizes of a run, derived from the box and the config.

Rates follow the paper (encoder 1e-4, decoder 0.05 → 0.02 at the switch, poses 0.05). The frequency
disk grows during exploration (coarse poses first), stays at the exploration's top during auto-encoding
and grows again to all but the corner over the first half of auto-decoding. Every value is a fraction of
the box or of Nyquist, never an absolute resolution, so nothing is tuned to one dataset.
"""

from __future__ import annotations

import torch

from ..physics.fourier import radial_shells
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
    start_fraction = 0.3  # of the largest radius, at epoch 0 when auto-encoding starts from the blob
    full_at_fraction = 0.5  # of the epochs: where the encoding radius reaches its top
    # The exploration's first and last radius in cycles per box: the box scales with the particle, so these
    # are the same detail relative to the particle at any pixel size (capped below Nyquist in small boxes).
    explore_radii = (5.0, 13.0)
    # (HEALPix nside, in-plane angles): 576 rotations ~30° apart, then 4608 ~15° apart. The coarse grid
    # lets a blob's top candidates span distinct poses; the fine one puts most particles within the basin
    # of local refinement (with a good map: 99 % within 25° of the truth on ribosome70s, against 65 %).
    explore_grids = ((2, 12), (4, 24))
    explore_fine_from = 0.5  # of the exploration epochs
    # While the independent halves still disagree at exploration's planned end, it goes on at its top radius
    # on the fine grid, this many epochs at a time, for at most as many epochs again as planned (the run's
    # total grows by as much): at SNR 0.05 one half can need twice the planned epochs to find the structure.
    explore_extend_step = 2
    explore_top_k = 8  # poses kept per image
    explore_temperatures = (1.0, 1.0)
    explore_prior = True
    explore_memory = 1280  # images the running map sums remember (each batch weighs batch/memory)
    # Auto-decoding refines poses only out to where the two half maps still agree: radius ≤ factor ×
    # (their FSC-0.143 radius) + shells, as RELION's auto-refine does; beyond it poses would fit noise.
    resolution_margin = (1.2, 2.0)
    # Pose rates decay geometrically over auto-decoding to this fraction: Adam moves a pose by about its
    # rate per step even where the likelihood is flat (a globular particle, a weak signal), so full rates
    # to the end make poses wander ~10° an epoch; large early steps still reach the basin.
    pose_rate_final = 0.1
    # Exploration searches around each particle's last shift under a Gaussian prior of σ = this × box (px)
    # from the box centre, so it follows picks beyond the search radius without letting shifts float.
    # None: every search is centred on the box centre, without a prior.
    shift_prior_fraction: float | None = 1 / 16
    # Global re-searches in auto-decoding, this many epochs apart (see ``research_epochs``); a round after
    # the first only when the last moved at least this share of the particles to another basin.
    research_rounds = 3
    research_every = 2
    research_again = 0.01

    def __init__(self, box: int, config: RunConfig, device: str = "cpu", n_particles: int = 4096):
        self.box = box
        self.planned_epochs = config.epochs
        cpu = device == "cpu"
        self.encoder_box = min(config.encoder_box or (32 if cpu else box), box)
        self.encoder_width = config.encoder_width or (16 if cpu else 32)
        self.max_shift = box / 8
        self.shift_search = box / 16  # pixels searched around each head's shift (1-px grid)
        self.shift_prior = None if self.shift_prior_fraction is None else box * self.shift_prior_fraction
        self.max_radius = box / 2 - 1

        self.explore_epochs = min(config.explore_epochs, config.epochs)
        self.explore_extended = 0  # epochs added to exploration because the halves still disagreed
        self.extend_allowed = config.explore_extend == "auto"
        # Stochastic EM needs many map updates per epoch: ~16 batches, of 32 to 256 images.
        self.explore_batch = int(min(256, max(32, n_particles // 16)))
        self.switch_epoch: int | None = None  # set by the engine when auto-decoding starts
        self.radius_cap: float | None = None  # set by the engine from the half maps' FSC while decoding
        self.reference_fsc: list[float] | None = None  # the halves' last FSC per shell, while decoding

    @property
    def epochs(self) -> int:
        """The run's epochs in all: those planned and those an extended exploration added."""
        return self.planned_epochs + self.explore_extended

    @property
    def explore_end(self) -> int:
        """The epoch exploration ends at: the planned epochs and those added while the halves disagreed."""
        return self.explore_epochs + self.explore_extended

    def can_extend_exploration(self) -> bool:
        """Whether exploration may still be extended (at most ``explore_epochs`` epochs in all)."""
        return self.extend_allowed and self.explore_epochs > 0 and self.explore_extended < self.explore_epochs

    def extend_exploration(self) -> int:
        """Add up to ``explore_extend_step`` epochs to exploration (and so to the run); returns how many."""
        step = min(self.explore_extend_step, self.explore_epochs - self.explore_extended)
        self.explore_extended += step
        return step

    def cap_from_fsc(self, radius_fsc0143: float) -> None:
        """Limit auto-decoding's radius to the half maps' FSC-0.143 radius (cycles per box) plus a margin."""
        factor, shells = self.resolution_margin
        self.radius_cap = factor * radius_fsc0143 + shells

    def reference_weight(self, box: int, device: torch.device | str) -> torch.Tensor | None:
        """The filter (D, D, D) the pose steps see each half map through, or None before any FSC.

        Per shell, the halves' last FSC clipped to [0, 1]: the share of a half map's power there that is
        signal, so the filtered map is its Wiener estimate (as RELION weights its references). Unfiltered,
        the shells where the halves barely agree add the map's noise to every pose's score.
        """
        if self.reference_fsc is None:
            return None
        values = torch.tensor(self.reference_fsc, dtype=torch.float32, device=device).clamp(0.0, 1.0)
        return values[radial_shells(box, 3, device).clamp_max(len(values) - 1)]

    def radius(self, stage: Stage, epoch: int) -> float:
        """Low-pass radius in cycles per box of the likelihood at ``epoch``."""
        lo, hi = (min(r, 0.8 * self.max_radius) for r in self.explore_radii)
        if stage == Stage.EXPLORING:  # an extended exploration stays at the top
            return lo + (hi - lo) * min(epoch, self.explore_epochs - 1) / max(1, self.explore_epochs - 1)
        if stage == Stage.ENCODING:
            if self.explore_epochs:
                return hi
            ramp = min(1.0, epoch / max(1.0, self.full_at_fraction * self.epochs))
            start, top = self.start_fraction * self.max_radius, 0.75 * self.max_radius
            return start + ramp * (top - start)
        start = self.switch_epoch if self.switch_epoch is not None else epoch
        at_switch = self.radius(Stage.EXPLORING if start < self.explore_end else Stage.ENCODING, start)
        ramp = min(1.0, (epoch - start + 1) / max(1.0, (self.epochs - start) / 2))
        radius = min(self.max_radius, at_switch + ramp * (self.max_radius - at_switch))
        if self.radius_cap is not None:
            radius = min(radius, max(self.radius_cap, at_switch))
        return radius

    def pose_rate_scale(self, epoch: int) -> float:
        """Factor on the pose rates at ``epoch``: 1 at the switch, ``pose_rate_final`` in the last epoch."""
        if self.switch_epoch is None:
            return 1.0
        progress = (epoch - self.switch_epoch) / max(1, self.epochs - 1 - self.switch_epoch)
        return self.pose_rate_final ** min(1.0, max(0.0, progress))

    def explored_radius(self, epoch: int) -> float:
        """The highest radius (cycles per box) exploration has used by the start of ``epoch``."""
        return self.radius(Stage.EXPLORING, max(0, min(epoch, self.explore_end) - 1))

    def research_epochs(self) -> tuple[int, ...]:
        """The auto-decoding epochs that may start with a global re-search of every pose (none without an
        exploration, or before the switch).

        The last halfway through auto-decoding, when the map has its full radius: local refinement cannot
        leave a wrong basin, but a search against the refined map can. Up to ``research_rounds - 1`` more
        come every ``research_every`` epochs before it, after the switch: each starts from a better map
        (``Stages.research_due`` skips those after a round that moved almost nothing).
        """
        if self.switch_epoch is None or not self.explore_epochs:
            return ()
        last = self.switch_epoch + max(1, (self.epochs - self.switch_epoch) // 2)
        rounds = (last - self.research_every * i for i in range(self.research_rounds))
        return tuple(sorted(e for e in rounds if e > self.switch_epoch))

    def explore_grid(self, epoch: int) -> int:
        """Index into ``explore_grids`` of the rotation grid exploration searches at ``epoch``."""
        return int(epoch >= self.explore_fine_from * self.explore_epochs)

    def explore_temperature(self, epoch: int) -> float:
        """Posterior temperature of exploration: from ``explore_temperatures[0]`` down to the last value."""
        hot, cold = self.explore_temperatures
        return hot + (cold - hot) * min(epoch, self.explore_epochs - 1) / max(1, self.explore_epochs - 1)

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
