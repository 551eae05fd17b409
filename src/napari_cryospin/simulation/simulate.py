"""Simulate a cryo-EM particle dataset from a map, with known poses, so reconstruction can be scored.

The forward model is the project's (CONVENTIONS.md): central slice of the map's spectrum at R, times the
CTF, displaced by the RELION origin shift, plus white Gaussian noise at a given SNR (variance of the clean
image over the whole box, averaged over the non-junk images, divided by the noise variance). Optional
nuisances of real stacks (``nuisances.py``, docs/simulation.md) make it realistic.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import starfile
import torch
from scipy.spatial.transform import Rotation

from ..data.mrc import write_volume
from ..data.safe_write import replacing
from ..geometry.rotations import random_rotations
from ..physics.ctf import ctf_2d
from ..physics.fourier import fftn_centered, frequency_grid_2d, ifftn_centered
from ..physics.shifts import centering_phase
from ..physics.slicing import extract_slices
from ..resources import bundled_map_path
from .nuisances import (
    EMPTY,
    OTHER,
    PARTICLE,
    Nuisances,
    blob_volume,
    colour,
    draw_labels,
    ice_images,
    noise_filter,
    normalize_background,
)

__all__ = [
    "Nuisances",
    "SimulationResult",
    "bundled_map_path",
    "resize_volume",
    "simulate",
    "simulate_to_dir",
    "write_simulation",
]

log = logging.getLogger(__name__)


@dataclass
class SimulationResult:
    """Images (n, L, L) float32 with their true poses, shifts and CTF parameters.

    ``volume`` is the map the images were projected from (after resizing to L), at ``pixel_size`` Å.
    ``voltage``, ``cs`` and ``amplitude_contrast`` are those of optics group 1; ``optics`` holds every
    group's (kV, Cs mm, amplitude contrast) and ``optics_group`` (n,) each particle's (1-based).
    ``junk_kind`` (n,) is 0 for particles, 1 for empty picks / ice, 2 for other particles / aggregates;
    ``intensity_scale`` (n,) multiplies each clean image.
    """

    images: np.ndarray
    rotations: np.ndarray
    shifts_px: np.ndarray
    defocus_u: np.ndarray
    defocus_v: np.ndarray
    defocus_angle: np.ndarray
    voltage: float
    cs: float
    amplitude_contrast: float
    pixel_size: float
    volume: np.ndarray
    snr: float | None
    signal_var: float
    noise_sigma: float
    seed: int
    optics: np.ndarray
    optics_group: np.ndarray
    junk_kind: np.ndarray
    intensity_scale: np.ndarray
    nuisances: Nuisances

    @property
    def junk(self) -> np.ndarray:
        """(n,) bool: True for junk images (no particle of the map at the recorded pose)."""
        return self.junk_kind != PARTICLE

    def __len__(self) -> int:
        return len(self.rotations)


def resize_volume(volume: np.ndarray, box: int) -> np.ndarray:
    """Fourier-crop (or zero-pad) a cubic map to ``box``³, keeping voxel values (the voxel size scales)."""
    d = volume.shape[0]
    if box == d:
        return np.asarray(volume, dtype=np.float32)
    spectrum = fftn_centered(torch.as_tensor(np.asarray(volume, dtype=np.float64)), 3)
    out = torch.zeros((box,) * 3, dtype=spectrum.dtype)
    m = min(box, d)
    src = slice(d // 2 - m // 2, d // 2 - m // 2 + m)
    dst = slice(box // 2 - m // 2, box // 2 - m // 2 + m)
    out[dst, dst, dst] = spectrum[src, src, src]
    return (ifftn_centered(out, 3).real * (box / d) ** 3).numpy().astype(np.float32)


def _check_volume(volume: np.ndarray) -> None:
    if volume.ndim != 3 or len(set(volume.shape)) != 1:
        raise ValueError(
            f"the map must be a cube (D, D, D), got shape {volume.shape}. Fix: pad it to a cube."
        )
    if volume.shape[0] % 2:
        raise ValueError(
            f"the map has an odd box ({volume.shape[0]}). Fix: pass an even box (--box) to resize it."
        )
    if not np.isfinite(volume).all():
        raise ValueError("the map holds NaN or infinite values. Fix: clean the map before simulating.")


class _Projector:
    """Clean CTF-modulated, shifted projections of one map, batch by batch (torch, any device)."""

    def __init__(self, volume: np.ndarray, pixel_size: float, oversampling: bool, device: str):
        box = volume.shape[0]
        vol = torch.as_tensor(volume, dtype=torch.float32, device=device)
        factor = 2 if oversampling else 1
        if oversampling:
            pad = box // 2
            vol = torch.nn.functional.pad(vol, (pad, pad, pad, pad, pad, pad))
        self.spectrum = fftn_centered(vol.to(torch.complex64), 3)
        self.box = box
        k = frequency_grid_2d(box, device=device).reshape(-1, 2)
        self.k = k
        self.k_slice = k * factor
        self.freqs = k / (box * pixel_size)
        self.device = device

    def __call__(self, rotations: np.ndarray, shifts: np.ndarray, ctf: dict[str, np.ndarray]) -> torch.Tensor:
        dev = self.device
        r = torch.as_tensor(rotations, dtype=torch.float32, device=dev)
        s = torch.as_tensor(shifts, dtype=torch.float32, device=dev)
        t = {key: torch.as_tensor(v, dtype=torch.float32, device=dev) for key, v in ctf.items()}
        h = ctf_2d(self.freqs, **t)
        spec = (
            h * extract_slices(self.spectrum, r, self.k_slice) * centering_phase(self.k / self.box, s).conj()
        )
        return ifftn_centered(spec.reshape(-1, self.box, self.box), 2).real

    def filter(self, images: np.ndarray, ctf: dict[str, np.ndarray]) -> torch.Tensor:
        """Real-space (k, L, L) images times their CTFs (no shift), as the projections are."""
        t = {key: torch.as_tensor(v, dtype=torch.float32, device=self.device) for key, v in ctf.items()}
        spec = fftn_centered(torch.as_tensor(images, device=self.device).to(torch.complex64), 2)
        spec = spec.reshape(len(images), -1) * ctf_2d(self.freqs, **t)
        return ifftn_centered(spec.reshape(-1, self.box, self.box), 2).real


@dataclass
class _JunkPlan:
    """Junk images' random content, drawn once for all particles so that batching does not change it.

    ``ice`` maps an empty pick to its (1, L, L) blob image; ``aggregate`` maps an "other" junk image that
    is two copies of the particle to their rotations (2, 3, 3) and offset (2,) px (the copies sit at ±it);
    the remaining "other" images are projections of ``other``, a different random density.
    """

    ice: dict[int, np.ndarray]
    aggregate: dict[int, tuple[np.ndarray, np.ndarray]]
    other: _Projector | None

    @classmethod
    def draw(cls, kind: np.ndarray, volume: np.ndarray, seed: int, projector_args: tuple) -> _JunkPlan:
        rng = np.random.default_rng([seed, 4])
        box, mass = volume.shape[0], float(volume.sum())
        ice = {int(p): ice_images(1, box, mass, rng) for p in np.flatnonzero(kind == EMPTY)}
        others = np.flatnonzero(kind == OTHER)
        copies = others[rng.random(len(others)) < 0.5]
        generator = torch.Generator().manual_seed(seed + 4)
        rotations = random_rotations(2 * len(copies), generator=generator, dtype=torch.float64).numpy()
        angles = rng.uniform(0, 2 * np.pi, len(copies))
        offsets = (box / 6) * np.stack([np.cos(angles), np.sin(angles)], axis=1)
        aggregate = {int(p): (rotations[2 * i : 2 * i + 2], offsets[i]) for i, p in enumerate(copies)}
        other = _Projector(blob_volume(box, mass, rng), *projector_args) if len(others) else None
        return cls(ice, aggregate, other)

    def images(
        self,
        kind: np.ndarray,
        part: slice,
        rotations: np.ndarray,
        shifts: np.ndarray,
        ctf: dict[str, np.ndarray],
        project: _Projector,
    ) -> dict[int, torch.Tensor]:
        """Clean junk images of the batch ``part`` (CTF applied), keyed by index within the batch."""
        out: dict[int, torch.Tensor] = {}
        for i in np.flatnonzero(kind[part] != PARTICLE):
            p = part.start + int(i)
            one = {key: v[p : p + 1] for key, v in ctf.items()}
            if p in self.ice:
                out[int(i)] = project.filter(self.ice[p], one)[0]
            elif p in self.aggregate:
                rot, offset = self.aggregate[p]
                two = {key: np.repeat(v, 2) for key, v in one.items()}
                out[int(i)] = project(rot, shifts[p] + np.stack([offset, -offset]), two).sum(0)
            else:
                assert self.other is not None
                out[int(i)] = self.other(rotations[p : p + 1], shifts[p : p + 1], one)[0]
        return out


def _checked_box(
    volume: np.ndarray,
    n: int,
    box: int | None,
    snr: float | None,
    defocus: tuple[float, float],
    nuisances: Nuisances,
) -> int:
    """The simulation's box (the map's when None), every input checked; ValueError names a bad one."""
    _check_volume(volume)
    nuisances.check()
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}.")
    if snr is not None and not snr > 0:
        raise ValueError(f"snr must be positive (or None for no noise), got {snr}.")
    if not 0 < defocus[0] <= defocus[1]:
        raise ValueError(f"defocus range must be 0 < min <= max (Å), got {defocus}.")
    box = volume.shape[0] if box is None else int(box)
    if box % 2 or box < 4:
        raise ValueError(f"box must be even and at least 4, got {box}. Fix: choose an even box.")
    return box


def _draw_ctf(
    rng: np.random.Generator,
    group: np.ndarray,
    defocus: tuple[float, float],
    astigmatism: float | None,
    optics1: tuple[float, float, float],
    nuisances: Nuisances,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Each particle's CTF parameters (defocus drawn from ``rng``) and the optics groups' (kV, Cs, AC)."""
    n = len(group)
    mean_defocus = rng.uniform(defocus[0], defocus[1], size=n)
    half = 0.0 if astigmatism is None else astigmatism / 2
    angle = rng.uniform(0.0, 180.0, size=n) if astigmatism is not None else np.zeros(n)
    optics = np.array([optics1, nuisances.optics2 or optics1])
    optics = optics[: int(group.max())]
    ctf = {
        "defocus_u": mean_defocus + half,
        "defocus_v": mean_defocus - half,
        "defocus_angle": angle,
        "voltage": optics[group - 1, 0],
        "cs": optics[group - 1, 1],
        "amplitude_contrast": optics[group - 1, 2],
        "bfactor": np.full(n, float(nuisances.bfactor)),
    }
    return ctf, optics


def _project_all(
    images: np.ndarray,
    project: _Projector,
    junk: _JunkPlan,
    labels: tuple[np.ndarray, np.ndarray],
    poses: tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]],
    batch_size: int,
) -> float:
    """Write the clean images (junk swapped in, intensity applied) batch by batch; their mean variance.

    ``labels`` is (junk kind, intensity scale) and ``poses`` (rotations, shifts px, CTF) per particle;
    the variance is averaged over the particles (not the junk), over the whole box.
    """
    kind, intensity = labels
    rotations, shifts, ctf = poses
    n = len(images)
    signal_var = 0.0
    for start in range(0, n, batch_size):
        part = slice(start, min(n, start + batch_size))
        with torch.no_grad():
            clean = project(rotations[part], shifts[part], {k: v[part] for k, v in ctf.items()})
            for i, image in junk.images(kind, part, rotations, shifts, ctf, project).items():
                clean[i] = image
        clean *= torch.as_tensor(intensity[part], dtype=clean.dtype, device=clean.device)[:, None, None]
        particle = torch.as_tensor(kind[part] == PARTICLE, device=clean.device)
        signal_var += float(clean[particle].double().var(dim=(-2, -1), unbiased=False).sum())
        images[part] = clean.cpu().numpy()
    return signal_var / max(1, int((kind == PARTICLE).sum()))


def _add_noise(images: np.ndarray, sigma: float, nuisances: Nuisances, seed: int, batch_size: int) -> None:
    """Add noise of sd ``sigma`` (white or coloured; none at 0), then invert and normalise as asked."""
    n, box = len(images), images.shape[-1]
    amplitude = noise_filter(box) if nuisances.coloured_noise else None
    noise_rng = np.random.default_rng([seed, 2])
    for start in range(0, n, batch_size):
        part = slice(start, min(n, start + batch_size))
        if sigma > 0:
            noise = noise_rng.standard_normal(images[part].shape, dtype=np.float32)
            if amplitude is not None:
                noise = colour(noise, amplitude)
            images[part] += np.float32(sigma) * noise
        if nuisances.polarity == "white":
            images[part] *= np.float32(-1)
        if nuisances.normalize:
            images[part] = normalize_background(images[part])


def simulate(
    volume: np.ndarray,
    voxel_size: float,
    n: int,
    *,
    box: int | None = None,
    snr: float | None = 0.1,
    defocus: tuple[float, float] = (10000.0, 30000.0),
    astigmatism: float | None = None,
    max_shift_px: float = 3.0,
    voltage: float = 300.0,
    cs: float = 2.7,
    amplitude_contrast: float = 0.1,
    seed: int = 0,
    batch_size: int = 512,
    oversampling: bool = True,
    device: str = "cpu",
    out: np.ndarray | None = None,
    nuisances: Nuisances | None = None,
) -> SimulationResult:
    """Simulate ``n`` particle images of ``volume`` (D³, ``voxel_size`` Å) with uniform random poses.

    ``box`` Fourier-crops/pads the map first (pixel size × D/box). ``astigmatism`` (Å) splits defocus U/V
    around the drawn mean at a random angle. ``snr=None`` (or inf) gives noise-free images.
    ``oversampling`` slices a 2× zero-padded map (accurate interpolation). ``out`` (n, L, L) float32, e.g.
    an MRC memory map, receives the images so large stacks never sit in RAM. ``nuisances`` adds those of
    real stacks (none by default). Equal seeds give equal data.
    """
    volume = np.asarray(volume)
    nuisances = nuisances or Nuisances()
    box = _checked_box(volume, n, box, snr, defocus, nuisances)
    pixel_size = float(voxel_size) * volume.shape[0] / box
    volume = resize_volume(volume, box)
    if out is not None and (out.shape != (n, box, box) or out.dtype != np.float32):
        raise ValueError(f"out must be float32 of shape {(n, box, box)}, got {out.dtype} {out.shape}.")
    images = np.empty((n, box, box), dtype=np.float32) if out is None else out

    generator = torch.Generator().manual_seed(seed)
    rotations = random_rotations(n, generator=generator, dtype=torch.float64).numpy()
    rng = np.random.default_rng([seed, 1])
    shifts = rng.uniform(-max_shift_px, max_shift_px, size=(n, 2))
    group, kind, intensity = draw_labels(n, nuisances, np.random.default_rng([seed, 3]))
    ctf, optics = _draw_ctf(rng, group, defocus, astigmatism, (voltage, cs, amplitude_contrast), nuisances)
    project = _Projector(volume, pixel_size, oversampling, device)
    junk = _JunkPlan.draw(kind, volume, seed, (pixel_size, oversampling, device))
    labels = (kind, intensity)
    signal_var = _project_all(images, project, junk, labels, (rotations, shifts, ctf), batch_size)
    noisy = snr is not None and math.isfinite(snr)
    noise_sigma = math.sqrt(signal_var / snr) if noisy else 0.0
    _add_noise(images, noise_sigma, nuisances, seed, batch_size)
    return SimulationResult(
        images=images,
        rotations=rotations,
        shifts_px=shifts,
        defocus_u=ctf["defocus_u"],
        defocus_v=ctf["defocus_v"],
        defocus_angle=ctf["defocus_angle"],
        voltage=float(voltage),
        cs=float(cs),
        amplitude_contrast=float(amplitude_contrast),
        pixel_size=pixel_size,
        volume=volume,
        snr=snr if noisy else None,
        signal_var=signal_var,
        noise_sigma=noise_sigma,
        seed=seed,
        optics=optics,
        optics_group=group,
        junk_kind=kind,
        intensity_scale=intensity,
        nuisances=nuisances,
    )


def _tables(result: SimulationResult, pixel_size: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """RELION 3.1 optics and particle tables (CTF only, no poses) for a simulated stack."""
    n, box, groups = len(result), result.images.shape[-1], len(result.optics)
    optics = pd.DataFrame(
        {
            "rlnOpticsGroup": np.arange(1, groups + 1),
            "rlnOpticsGroupName": [f"opticsGroup{g + 1}" for g in range(groups)],
            "rlnAmplitudeContrast": result.optics[:, 2],
            "rlnSphericalAberration": result.optics[:, 1],
            "rlnVoltage": result.optics[:, 0],
            "rlnImagePixelSize": [pixel_size] * groups,
            "rlnImageSize": [box] * groups,
            "rlnImageDimensionality": [2] * groups,
        }
    )
    particles = pd.DataFrame(
        {
            "rlnImageName": [f"{i + 1:06d}@particles.mrcs" for i in range(n)],
            "rlnOpticsGroup": result.optics_group.astype(int),
            "rlnDefocusU": result.defocus_u,
            "rlnDefocusV": result.defocus_v,
            "rlnDefocusAngle": result.defocus_angle,
        }
    )
    if result.nuisances.bfactor:
        particles["rlnCtfBfactor"] = result.nuisances.bfactor
    return optics, particles


def _write_star(path: Path, optics: pd.DataFrame, particles: pd.DataFrame) -> None:
    with replacing(path) as tmp:
        starfile.write({"optics": optics, "particles": particles}, tmp, overwrite=True)


def _new_stack(path: Path, n: int, box: int, pixel_size: float) -> mrcfile.mrcmemmap.MrcMemmap:
    mrc = mrcfile.new_mmap(path, shape=(n, box, box), mrc_mode=2, overwrite=True)
    mrc.set_image_stack()
    mrc.voxel_size = pixel_size
    return mrc


def write_simulation(
    result: SimulationResult,
    out_dir: str | os.PathLike,
    voxel_size: float | None = None,
    truth_volume: np.ndarray | None = None,
    *,
    write_stack: bool = True,
) -> Path:
    """Write particles.mrcs, particles.star (no poses), truth.star (with poses), truth_volume.mrc, junk.npy.

    truth.star adds rlnClassNumber (1 particle, 2 empty pick / ice, 3 other particle / aggregate) when
    there is junk, and rlnCtfScalefactor (the intensity factor) when it varies; junk.npy is (n,) bool.

    ``voxel_size`` and ``truth_volume`` default to the result's own pixel size and projected map; the stack
    is copied in batches (skip it with ``write_stack=False`` when ``result.images`` already is that file).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pixel_size = result.pixel_size if voxel_size is None else float(voxel_size)
    truth_volume = result.volume if truth_volume is None else truth_volume
    n, box = len(result), result.images.shape[-1]
    if write_stack:
        with _new_stack(out_dir / "particles.mrcs", n, box, pixel_size) as mrc:
            for start in range(0, n, 4096):
                mrc.data[start : start + 4096] = result.images[start : start + 4096]
            mrc.update_header_stats()
    optics, particles = _tables(result, pixel_size)
    _write_star(out_dir / "particles.star", optics, particles)
    euler = Rotation.from_matrix(result.rotations).as_euler("ZYZ", degrees=True)
    truth = particles.assign(
        rlnAngleRot=euler[:, 0],
        rlnAngleTilt=euler[:, 1],
        rlnAnglePsi=euler[:, 2],
        rlnOriginXAngst=result.shifts_px[:, 0] * pixel_size,
        rlnOriginYAngst=result.shifts_px[:, 1] * pixel_size,
    )
    if result.junk.any():
        truth["rlnClassNumber"] = result.junk_kind + 1
    if result.nuisances.intensity_spread > 0:
        truth["rlnCtfScalefactor"] = result.intensity_scale
    _write_star(out_dir / "truth.star", optics, truth)
    np.save(out_dir / "junk.npy", result.junk)
    write_volume(out_dir / "truth_volume.mrc", truth_volume, pixel_size)
    return out_dir


def simulate_to_dir(
    volume: np.ndarray, voxel_size: float, n: int, out_dir: str | os.PathLike, **kwargs
) -> SimulationResult:
    """:func:`simulate` straight into ``out_dir/particles.mrcs`` (memory-mapped), then the STAR files.

    Keyword arguments are those of :func:`simulate`; the returned result holds no images (an empty
    array): they are in the file.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    box = int(kwargs.get("box") or volume.shape[0])
    pixel_size = float(voxel_size) * volume.shape[0] / box
    with _new_stack(out_dir / "particles.mrcs", n, box, pixel_size) as mrc:
        result = simulate(volume, voxel_size, n, out=mrc.data, **kwargs)
        mrc.update_header_stats()
        write_simulation(result, out_dir, write_stack=False)
        log.info("simulated %d images of %d px at %.3f Å/px into %s", n, box, pixel_size, out_dir)
    result.images = np.empty((0, box, box), dtype=np.float32)
    return result
