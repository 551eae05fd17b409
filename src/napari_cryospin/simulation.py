"""Simulate a cryo-EM particle dataset from a map, with known poses, so reconstruction can be scored.

The forward model is the project's (CONVENTIONS.md): central slice of the map's spectrum at R, times the
CTF, displaced by the RELION origin shift, plus white Gaussian noise at a given SNR (variance of the clean
image over the whole box, averaged over images, divided by the noise variance).
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

from .data.mrc import write_volume
from .geometry.rotations import random_rotations
from .physics.ctf import ctf_2d
from .physics.fourier import fftn_centered, frequency_grid_2d, ifftn_centered
from .physics.shifts import centering_phase
from .physics.slicing import extract_slices
from .resources import bundled_map_path
from .safe_write import replacing

__all__ = [
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
) -> SimulationResult:
    """Simulate ``n`` particle images of ``volume`` (D³, ``voxel_size`` Å) with uniform random poses.

    ``box`` Fourier-crops/pads the map first (pixel size × D/box). ``astigmatism`` (Å) splits defocus U/V
    around the drawn mean at a random angle. ``snr=None`` (or inf) gives noise-free images.
    ``oversampling`` slices a 2× zero-padded map (accurate interpolation). ``out`` (n, L, L) float32, e.g.
    an MRC memory map, receives the images so large stacks never sit in RAM. Equal seeds give equal data.
    """
    volume = np.asarray(volume)
    _check_volume(volume)
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}.")
    if snr is not None and not snr > 0:
        raise ValueError(f"snr must be positive (or None for no noise), got {snr}.")
    if not 0 < defocus[0] <= defocus[1]:
        raise ValueError(f"defocus range must be 0 < min <= max (Å), got {defocus}.")
    box = volume.shape[0] if box is None else int(box)
    if box % 2 or box < 4:
        raise ValueError(f"box must be even and at least 4, got {box}. Fix: choose an even box.")
    pixel_size = float(voxel_size) * volume.shape[0] / box
    volume = resize_volume(volume, box)
    if out is not None and (out.shape != (n, box, box) or out.dtype != np.float32):
        raise ValueError(f"out must be float32 of shape {(n, box, box)}, got {out.dtype} {out.shape}.")
    images = np.empty((n, box, box), dtype=np.float32) if out is None else out

    generator = torch.Generator().manual_seed(seed)
    rotations = random_rotations(n, generator=generator, dtype=torch.float64).numpy()
    rng = np.random.default_rng([seed, 1])
    shifts = rng.uniform(-max_shift_px, max_shift_px, size=(n, 2))
    mean_defocus = rng.uniform(defocus[0], defocus[1], size=n)
    half = 0.0 if astigmatism is None else astigmatism / 2
    angle = rng.uniform(0.0, 180.0, size=n) if astigmatism is not None else np.zeros(n)
    ctf = {
        "defocus_u": mean_defocus + half,
        "defocus_v": mean_defocus - half,
        "defocus_angle": angle,
        "voltage": np.full(n, voltage),
        "cs": np.full(n, cs),
        "amplitude_contrast": np.full(n, amplitude_contrast),
    }

    project = _Projector(volume, pixel_size, oversampling, device)
    signal_var = 0.0
    for start in range(0, n, batch_size):
        part = slice(start, min(n, start + batch_size))
        with torch.no_grad():
            clean = project(rotations[part], shifts[part], {k: v[part] for k, v in ctf.items()})
        signal_var += float(clean.double().var(dim=(-2, -1), unbiased=False).sum())
        images[part] = clean.cpu().numpy()
    signal_var /= n

    noisy = snr is not None and math.isfinite(snr)
    noise_sigma = math.sqrt(signal_var / snr) if noisy else 0.0
    if noisy:
        noise_rng = np.random.default_rng([seed, 2])
        for start in range(0, n, batch_size):
            part = slice(start, min(n, start + batch_size))
            noise = noise_rng.standard_normal(images[part].shape, dtype=np.float32)
            images[part] += np.float32(noise_sigma) * noise
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
    )


def _tables(result: SimulationResult, pixel_size: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """RELION 3.1 optics and particle tables (CTF only, no poses) for a simulated stack."""
    n, box = len(result), result.images.shape[-1]
    optics = pd.DataFrame(
        {
            "rlnOpticsGroup": [1],
            "rlnOpticsGroupName": ["opticsGroup1"],
            "rlnAmplitudeContrast": [result.amplitude_contrast],
            "rlnSphericalAberration": [result.cs],
            "rlnVoltage": [result.voltage],
            "rlnImagePixelSize": [pixel_size],
            "rlnImageSize": [box],
            "rlnImageDimensionality": [2],
        }
    )
    particles = pd.DataFrame(
        {
            "rlnImageName": [f"{i + 1:06d}@particles.mrcs" for i in range(n)],
            "rlnOpticsGroup": np.ones(n, dtype=int),
            "rlnDefocusU": result.defocus_u,
            "rlnDefocusV": result.defocus_v,
            "rlnDefocusAngle": result.defocus_angle,
        }
    )
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
    """Write particles.mrcs, particles.star (no poses), truth.star (with poses) and truth_volume.mrc.

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
    _write_star(out_dir / "truth.star", optics, truth)
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
