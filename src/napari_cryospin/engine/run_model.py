"""The model of one run: its particles at the working box, map, encoder and poses, and where the run stands.

Built by one factory from the settings (:meth:`RunModel.from_config`, a new run) or from a run folder's
checkpoint (:meth:`RunModel.from_checkpoint`, a run to browse or resume). It offers what every consumer
needs: a batch as the run sees it (polarity, scale, whitening), candidate poses scored against each
particle's own half map, and (``particle_view.py``) a projection and a particle's pose picture. The engine
(``engine.py``) only advances it; outputs, junk and particle scores, the mate check, the semi-amortized
posing and the run explorer read it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..data.errors import ParticleFileError
from ..data.particle_set import ParticleSet
from ..data.particles import load_particles
from ..diagnostics.ctf_check import check_ctf
from ..diagnostics.polarity import choose_polarity
from ..geometry.rotations import random_rotations
from ..geometry.symmetry import group_operators
from ..model.encoder import MultiHeadEncoder
from ..model.likelihood import (
    FrequencyDisk,
    ImageBatch,
    prepare_batch,
    searched_error,
    shift_grid,
    squared_error,
)
from ..model.noise import estimate_noise
from ..model.poses import ParticlePoses
from ..model.prior import prior_weight, signal_power
from ..model.search import grid_search, so3_grid
from ..model.volume import HartleyVolume
from ..physics.fourier import hartley_centered, radial_shells
from ..physics.reconstruction import backproject, split_halves
from . import distributed
from .amortized import SemiAmortized, explored_count
from .checkpoint import CheckpointError, load_checkpoint
from .config import RunConfig
from .events import Stage
from .inputs import check_enough_particles
from .schedule import Schedule
from .validity import half_map_mask
from .working_box import working_box

log = logging.getLogger(__name__)

BROWSE_KEYS = (
    "config",
    "stage",
    "epoch",
    "volume",
    "encoder",
    "best_rot",
    "best_shift",
    "best_head",
    "scale",
)
"""What a checkpoint must hold to be browsed (older checkpoints without the input's identity will do)."""


def run_particles(config: RunConfig, device_type: str, box: int | None = None) -> ParticleSet:
    """The run's particles, checked (CTF, count), at its working box (``box``: a saved run's, else chosen
    for ``device_type`` as ``working_box.py`` says)."""
    particles = load_particles(config.particles, box=config.box)
    particles = particles.at_box(box or working_box(particles.stack.original_box, config.box, device_type))
    if particles.ctf is None:
        raise ParticleFileError(
            f"{particles.path}: a bare stack has no CTF parameters. "
            "Fix: open the RELION .star or cryoSPARC .cs file that describes this stack."
        )
    if config.max_particles is not None and config.max_particles < len(particles):
        particles = particles.subset(np.arange(config.max_particles))
    check_enough_particles(particles, limited=config.max_particles is not None)
    return particles


class RunModel:
    """One run's data, parameters and place; see the module docstring for who builds and reads it."""

    def __init__(
        self,
        config: RunConfig,
        particles: ParticleSet,
        device: torch.device,
        dp: distributed.DataParallel | None = None,
        device_kind: str | None = None,
    ) -> None:
        """The cheap part of a run (``build`` or ``load_state`` adds the rest); ``device_kind``: the kind of
        device the run's schedule was made for (a saved run's, when browsed on another)."""
        self.config = config
        self.device = device
        self.dp = dp if dp is not None else distributed.DataParallel(device=device)
        self.particles = particles
        self.n, self.box = len(particles), particles.box
        # (n, 3, 3) the group every map is read through: C1 until --symmetry is imposed at the switch.
        self.symmetry = group_operators("C1")
        self.imposed: dict | None = None  # how --symmetry was imposed at the switch (symmetry_frame.py)
        explored = explored_count(config.explore_subset, self.n)  # exploration's batches follow its size
        self.schedule = Schedule(self.box, config, device_kind or device.type, explored)
        self.disk = FrequencyDisk(self.box, particles.pixel_size, device)
        _, half_b = split_halves(self.n, config.seed)
        self.halves_np = np.zeros(self.n, np.int64)
        self.halves_np[half_b] = 1  # the same halves as the half maps written out
        self.halves = torch.from_numpy(self.halves_np).to(device)
        self.semi = SemiAmortized(self.n, self.halves_np, config.explore_subset, config.heads, config.seed)
        self.offsets = shift_grid(self.schedule.shift_search, device=device)
        self.grids = [so3_grid(*grid).to(device) for grid in self.schedule.explore_grids]
        self.reference_weight: torch.Tensor | None = None  # the pose steps' map filter (follow_fsc)
        self.reference_mask = torch.from_numpy(half_map_mask(self.box)).to(device)  # and their mask
        self.polarity = self.ctf_check = self.noise = self.prior = None
        self.scale = 1.0
        self.poses: ParticlePoses | None = None
        self.best_rot = torch.eye(3).repeat(self.n, 1, 1)
        self.best_shift = torch.zeros(self.n, 2)
        self.best_head = torch.full((self.n,), -1, dtype=torch.long)
        self.stage = Stage.EXPLORING if self.schedule.explore_epochs else Stage.ENCODING
        self.epoch = 0
        self.elapsed = 0.0
        self.history: list[dict] = []
        self.switch_reason = ""
        self.halves_aligned = True
        self.agreement: dict | None = None  # how well the independent halves agreed once aligned
        self.explore_checks: list[float] = []  # FSC-0.5 radii of the checks that extended exploration
        self.restarted: dict | None = None  # the half restarted from the other's map (reseed.py), if any
        self.research_moved: float | None = None  # share of particles the global re-search moved
        self.research_far: float | None = None  # and the share it moved to another basin

    # ------------------------------------------------------------------------------------- factories
    @classmethod
    def from_config(cls, config: RunConfig, device: torch.device, dp: distributed.DataParallel) -> RunModel:
        """A new run's model, its input checked; :meth:`build` then measures the data and starts the map."""
        return cls(config, run_particles(config, device.type), device, dp)

    @classmethod
    def from_checkpoint(cls, folder: str | Path, device: str | torch.device = "cpu") -> RunModel:
        """The model saved in run folder ``folder`` (read-only use: browsing a finished or stopped run)."""
        folder, device = Path(folder), torch.device(device)
        state = load_checkpoint(folder, BROWSE_KEYS)
        config = RunConfig.from_dict(state["config"])
        config.particles = _particles_path(config, state)
        box = int(state["volume"]["mantissa"].shape[-1])  # the run's working box
        particles = run_particles(config, device.type, box)
        for kind in ("cpu", "cuda"):  # the encoder's size followed the kind of device the run had
            model = cls(config, particles, device, device_kind=kind)
            model.encoder = model._new_encoder()
            try:
                model.encoder.load_state_dict(state["encoder"])
            except RuntimeError:
                continue
            model._measure(_polarity_sign(folder), state["scale"])
            model.volume = HartleyVolume(box, torch.zeros(box, box, box), 1, model.symmetry).to(device)
            model.load_state(state)
            model.encoder.eval()
            model.volume.eval()
            return model
        raise CheckpointError(
            f"{folder / 'checkpoint.pt'}: its encoder does not fit the run's settings. "
            "Fix: open the folder the checkpoint was written in, with the version that wrote it."
        )

    # ----------------------------------------------------------------------------------------- build
    def build(self) -> None:
        """Measure the data (polarity, CTF, scale, noise) and start the encoder and the map (a blob)."""
        cfg = self.config
        torch.manual_seed(cfg.seed)
        gen = torch.Generator().manual_seed(cfg.seed)
        self._measure(None, None)
        self.ctf_check = check_ctf(self.particles, seed=cfg.seed, device=self.device)
        if not self.ctf_check.consistent:
            log.warning("%s: %s", cfg.particles, self.ctf_check.summary())
        exploring = self.schedule.explore_prior and self.schedule.explore_epochs > 0
        self.prior = self._signal_prior() if exploring else None  # only exploration's maps use it
        self.encoder = self.dp.share_batch_statistics(self._new_encoder())
        # Gold standard: with half maps, the two halves are explored independently from the start and
        # share nothing until half B's map is aligned onto half A's (paper path: split at the switch).
        independent = cfg.half_maps and self.schedule.explore_epochs > 0
        self.volume = self._initial_volume(gen, 2 if independent else 1)
        self.halves_aligned = not independent

    def _measure(self, sign: float | None, scale: float | None) -> None:
        """Polarity (``sign`` when known), image scale and noise model: how every image is read."""
        cfg = self.config
        if sign is None:
            self.polarity = choose_polarity(self.particles, cfg.polarity, cfg.seed, self.device)
            sign = self.polarity.sign
        self.particles.stack.sign = sign  # every image (and map) read from here on
        self.scale = self._image_scale() if scale is None else float(scale)
        self.noise = estimate_noise(self.particles, self.scale, self.disk.radius, cfg.noise_model, cfg.seed)

    def _new_encoder(self) -> MultiHeadEncoder:
        sch = self.schedule
        encoder = MultiHeadEncoder(
            sch.encoder_box, self.config.heads, sch.encoder_width, max_shift=sch.max_shift
        )
        return encoder.to(self.device)

    def _image_scale(self) -> float:
        """Global standard deviation of a sample of images: every image is divided by it."""
        rng = np.random.default_rng(self.config.seed)
        pick = np.sort(rng.choice(self.n, size=min(self.n, 512), replace=False))
        return float(np.std(self.particles.stack[pick])) or 1.0

    def _signal_prior(self) -> torch.Tensor | None:
        """Exploration maps' prior term noise/τ² per shell, from a sample of images (None: no level)."""
        if self.noise.level is None:
            return None
        rng = np.random.default_rng([self.config.seed, 11])
        pick = np.sort(rng.choice(self.n, size=min(self.n, 1000), replace=False))
        batches = (self.batch(pick[s : s + 256]) for s in range(0, len(pick), 256))
        return prior_weight(signal_power(batches, self.disk, self.noise.level), self.noise.level)

    def _initial_volume(self, generator: torch.Generator, copies: int) -> HartleyVolume:
        """Exponent from the data's radial spectrum; mantissa from a random-pose reconstruction (a blob).

        With two copies (independent halves), each copy's blob comes from its own half's particles.
        """
        rot = random_rotations(self.n, generator).numpy()
        shells = radial_shells(self.box, 3, self.device).reshape(-1)
        blobs, exponents = [], []
        for c in range(copies):
            members = np.flatnonzero(self.halves_np == c) if copies == 2 else np.arange(self.n)
            idx = members[: 1024 // copies]
            blob = backproject(self.particles, rot, np.zeros((self.n, 2)), indices=idx, device=self.device)
            # Volume units: its slices equal the orthonormal spectra of images divided by ``scale``.
            blob = torch.from_numpy(blob).to(self.device) / (self.scale * self.box)
            h = hartley_centered(blob, 3)
            power = torch.zeros(int(shells.max()) + 1, device=self.device)
            power.index_add_(0, shells, h.reshape(-1) ** 2)
            count = torch.zeros_like(power).index_add_(0, shells, torch.ones_like(h).reshape(-1))
            rms = (power / count.clamp_min(1)).sqrt().clamp_min(1e-8)
            blobs.append(blob)
            exponents.append(torch.log(rms)[shells].reshape(h.shape))
        volume = HartleyVolume(self.box, torch.stack(exponents), copies, self.symmetry).to(self.device)
        for c, blob in enumerate(blobs):
            volume.set_from_real_space(blob, copy=c)
        return volume

    # ------------------------------------------------------------------------------------ checkpoint
    def state(self) -> dict:
        """The model's part of a checkpoint (the engine adds its optimisers and place in the epoch)."""
        return {
            "config": self.config.to_dict(),
            "stage": self.stage.value,
            "epoch": self.epoch,
            "switch_epoch": self.schedule.switch_epoch,
            "radius_cap": self.schedule.radius_cap,
            "explore_extended": self.schedule.explore_extended,
            "explore_checks": self.explore_checks,
            "restarted": self.restarted,
            "reference_fsc": self.schedule.reference_fsc,
            "elapsed": self.elapsed,
            "scale": self.scale,
            "encoder": self.encoder.state_dict(),
            "volume": self.volume.state_dict(),
            "poses": None if self.poses is None else self.poses.state_dict(),
            "best_rot": self.best_rot,
            "best_shift": self.best_shift,
            "best_head": self.best_head,
            "history": self.history,
            "switch_reason": self.switch_reason,
            "halves_aligned": self.halves_aligned,
            "agreement": self.agreement,
            "research_moved": self.research_moved,
            "research_far": self.research_far,
            "semi": self.semi.state(),
            "imposed": self.imposed,
        }

    def load_state(self, st: dict) -> None:
        """Take the model's part of checkpoint ``st`` (keys a browsed checkpoint may lack default)."""
        self.stage, self.epoch = Stage(st["stage"]), int(st["epoch"])
        self.schedule.switch_epoch, self.schedule.radius_cap = st.get("switch_epoch"), st.get("radius_cap")
        self.schedule.explore_extended = int(st.get("explore_extended", 0))
        self.explore_checks = list(st.get("explore_checks", []))
        self.restarted = st.get("restarted")
        self.follow_fsc(st.get("reference_fsc"))
        self.elapsed, self.scale = st.get("elapsed", 0.0), float(st["scale"])
        self.encoder.load_state_dict(st["encoder"])
        if st["volume"]["mantissa"].shape[0] != self.volume.copies:
            self.volume.split()
        self.volume.load_state_dict(st["volume"])
        self.best_rot, self.best_shift = st["best_rot"].float(), st["best_shift"].float()
        self.best_head = st["best_head"]
        if st.get("poses") is not None:
            self.poses = ParticlePoses(self.best_rot, self.best_shift).to(self.device)
            self.poses.load_state_dict(st["poses"])
        self.history = st.get("history", [])
        self.switch_reason = st.get("switch_reason", "")
        self.halves_aligned = st.get("halves_aligned", True)
        self.agreement, self.research_moved = st.get("agreement"), st.get("research_moved")
        self.research_far = st.get("research_far")
        self.semi.restore(st.get("semi"))
        self.imposed = st.get("imposed")
        if self.imposed is not None and self.imposed["imposed"]:
            self.impose(self.imposed["group"])

    def impose(self, group: str) -> None:
        """Read every map through point group ``group`` from now on (its RELION frame: the map's axes are
        carried there first, ``symmetry_frame.py``)."""
        self.symmetry = group_operators(group)
        self.volume.impose(self.symmetry)

    def imposed_symmetry(self) -> tuple[str, np.ndarray] | None:
        """The imposed group's name and operators (identity first, in the map's frame), None in C1."""
        if self.imposed is None or not self.imposed["imposed"]:
            return None
        return self.imposed["group"], self.symmetry

    def follow_fsc(self, fsc: list[float] | None) -> None:
        """Keep the halves' FSC per shell (None: not measured while decoding) and the pose filter it makes."""
        self.schedule.reference_fsc = fsc
        self.reference_weight = self.schedule.reference_weight(self.box, self.device)

    # --------------------------------------------------------------------------------- what it offers
    def batch(self, idx: np.ndarray) -> ImageBatch:
        """Particles ``idx`` (B,) as the run sees them: polarity, scale, frequency disk, noise whitening."""
        order = np.argsort(idx)
        images = np.empty((len(idx), self.box, self.box), np.float32)
        images[order] = self.particles.stack[idx[order]]
        images_t = torch.from_numpy(images).to(self.device) / self.scale
        t_idx = torch.as_tensor(idx, device=self.device)
        return prepare_batch(t_idx, images_t, self.particles.ctf, self.disk, self.noise.weights(idx))

    def encoder_input(self, batch: ImageBatch) -> torch.Tensor:
        """The batch's images as the encoder takes them (cropped, at the encoder's box)."""
        return self.schedule.encoder_images(batch.images)

    def copy_of(self, index: int) -> int:
        """The map copy particle ``index`` is scored against (its half's once there are two)."""
        return int(self.halves_np[index]) if self.volume.copies == 2 else 0

    def copy_masks(self, idx: torch.Tensor) -> list[tuple[int, torch.Tensor]]:
        """(map copy, mask of the batch) for each copy with particles in the batch (one copy: all of them)."""
        if self.volume.copies == 1:
            return [(0, torch.ones_like(idx, dtype=torch.bool))]
        halves = self.halves[idx]
        return [(c, halves == c) for c in (0, 1) if bool((halves == c).any())]

    def copy_parts(self, batch: ImageBatch) -> list[tuple[int, torch.Tensor, ImageBatch]]:
        """(map copy, mask, sub-batch) for each copy with particles in ``batch``."""
        return [(c, mask, batch.select(mask)) for c, mask in self.copy_masks(batch.idx)]

    def by_copy(self, batch: ImageBatch, fn: Callable, parts: list | None = None) -> list[torch.Tensor]:
        """``fn(sub_batch, copy, mask)`` on each map copy's particles, results scattered back to (B, …);
        ``parts``: the batch's :meth:`copy_parts` when the caller reuses them (auto-decoding's steps).

        Every particle is scored against its own half's map only: the gold standard depends on it.
        """
        results: list[torch.Tensor] = []
        for c, mask, sub in self.copy_parts(batch) if parts is None else parts:
            out = fn(sub, c, mask)
            out = out if isinstance(out, tuple) else (out,)
            if not results:
                results = [t.new_empty((len(mask), *t.shape[1:])) for t in out]
            for r, t in zip(results, out, strict=True):
                r[mask] = t
        return results

    def score_candidates(
        self, batch: ImageBatch, rot: torch.Tensor, shift: torch.Tensor, n_points: int, detach: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Errors (B, C) and searched shifts (B, C, 2) of candidate poses (B, C, 3, 3) against each particle's
        own map; ``detach`` lets the gradient reach the poses only."""
        err, best = self.by_copy(
            batch,
            lambda sub, c, m: searched_error(
                self.volume, sub, rot[m], shift[m], self.offsets, self.disk, n_points, c, detach
            ),
        )
        return err, best

    def squared_error(
        self,
        batch: ImageBatch,
        rot: torch.Tensor,
        shift: torch.Tensor,
        n_points: int,
        detach: bool = False,
        parts: list | None = None,
    ) -> torch.Tensor:
        """Each particle's mean squared residual (B,) at one pose, against its own map (``detach``: the
        gradient reaches the poses only; ``parts`` as in :meth:`by_copy`)."""
        return self.by_copy(
            batch,
            lambda sub, c, m: squared_error(
                self.volume, sub, rot[m], shift[m], self.disk, n_points, c, detach
            ),
            parts,
        )[0]

    def fine_grid_search(
        self, batch: ImageBatch, rot: torch.Tensor, shift: torch.Tensor, n_points: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Against each particle's own half map: the error (B,) of its pose (rot (B, 3, 3), shift (B, 2) px)
        and the best fine-grid pose's error (B,), rotation (B, 3, 3) and shift (B, 2)."""

        def search(sub: ImageBatch, c: int, m: torch.Tensor) -> tuple[torch.Tensor, ...]:
            now = squared_error(self.volume, sub, rot[m], shift[m], self.disk, n_points, c)
            found = grid_search(  # around the particle's current shift
                self.volume, sub, self.grids[-1], shift[m], self.offsets, self.disk, n_points, 1, copy=c
            )
            return now, found.errors[:, 0], found.rotations[:, 0], found.shifts[:, 0]

        now, err, grid_rot, grid_shift = self.by_copy(batch, search)
        return now, err, grid_rot, grid_shift

    def with_kept(
        self, idx: np.ndarray, rot: torch.Tensor, shift: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Append each particle's kept pose (its best so far) to the heads' candidates (B, M + 1, …).

        Also returns which particles have a kept pose (none before the first epoch without exploration).
        """
        cpu_idx = torch.as_tensor(idx)
        kept_rot = self.best_rot[cpu_idx].to(self.device)[:, None]
        kept_shift = self.best_shift[cpu_idx].to(self.device)[:, None]
        has = (self.best_head[cpu_idx] >= 0).to(self.device)
        return torch.cat([rot, kept_rot], 1), torch.cat([shift, kept_shift], 1), has

    def best_candidates(
        self, idx: np.ndarray, batch: ImageBatch, rot: torch.Tensor, shift: torch.Tensor, n_points: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Score the heads' poses (B, M, …) and the kept pose; returns the errors (B, M + 1) (grad reaching
        the heads), the candidates with searched shifts (B, M + 1, …) and each particle's winner (B,)."""
        cand_rot, cand_shift, has = self.with_kept(idx, rot, shift)
        err, cand_shift = self.score_candidates(batch, cand_rot, cand_shift, n_points, detach=True)
        with torch.no_grad():
            scored = err.detach().clone()
            scored[:, -1] = torch.where(has, scored[:, -1], torch.full_like(scored[:, -1], float("inf")))
            win = scored.argmin(1)
        return err, cand_rot.detach(), cand_shift.detach(), win

    def n_points(self, stage: Stage | None = None, epoch: int | None = None) -> int:
        """Frequencies the likelihood uses in ``stage`` at ``epoch`` (default: where the run stands; a
        finished run's last epoch of auto-decoding)."""
        stage = self.stage if stage is None else stage
        stage = Stage.DECODING if stage == Stage.DONE else stage
        epoch = min(self.epoch, self.schedule.epochs - 1) if epoch is None else epoch
        return self.schedule.points(self.disk, stage, epoch)

    def current_poses(self) -> tuple[np.ndarray, np.ndarray]:
        """Every particle's current best rotation (n, 3, 3) and shift (n, 2) in pixels."""
        if self.poses is not None:
            with torch.no_grad():
                rot, shift = self.poses.all_poses()
            return rot.cpu().numpy(), shift.cpu().numpy()
        return self.best_rot.numpy(), self.best_shift.numpy()

    def volume_array(self) -> np.ndarray:
        """The map shown and saved (L, L, L): half A's until the independent halves are aligned, then their
        mean, in the images' units."""
        copy = None if self.halves_aligned else 0
        return self.volume.real_space(copy).cpu().numpy() * (self.scale * self.box)

    def head_fractions(self) -> np.ndarray:
        """Share of the posed particles whose kept pose came from each head (M,) and from elsewhere (last)."""
        won = self.best_head[self.best_head >= 0]
        counts = torch.bincount(won, minlength=self.config.heads + 1).float()
        return (counts / counts.sum().clamp_min(1)).numpy()


def _particles_path(config: RunConfig, state: dict) -> str:
    """The particle file a saved run read: the absolute path its checkpoint recorded, else the configured
    one (an older checkpoint)."""
    recorded = (state.get("input") or {}).get("path")
    return recorded if recorded and Path(recorded).exists() else config.particles


def _polarity_sign(folder: Path) -> float | None:
    """The sign the run applied to its images, from its metrics.json (None: measure it again as it did)."""
    try:
        return float(json.loads((folder / "metrics.json").read_text())["polarity"]["sign"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
