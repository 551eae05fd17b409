"""Global alignment of estimated poses and maps to the truth, up to a rotation and the hand.

A reconstruction is defined only up to a global rotation A and a mirror ``F = diag(1, 1, −1)``: the poses
``R_est = A·G`` with ``G = R_gt`` or ``G = F·R_gt·F`` explain the same images with the map
``V_est(p) = V_gt(M⁻¹·p)``, ``M = A`` or ``A·F``; so ``V_est(M·q)`` is ``V_gt(q)`` (``align_volume``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from scipy import ndimage

from ..geometry.rotations import axis_angle_to_matrix, geodesic_distance, random_rotations
from .fsc import fsc, resolution_at
from .translation import best_translation, translate

MIRROR = np.diag([1.0, 1.0, -1.0])
"""The hand flip F; ``F·R·F`` is the pose of a mirrored map that gives the same images as R."""


@dataclass
class AlignmentResult:
    """Global rotation A and hand that best map the true poses onto the estimates, and the residuals."""

    rotation: np.ndarray  # A, (3, 3)
    flip: bool  # True when R_est ≈ A·F·R_gt·F (the estimate has the other hand)
    errors_deg: np.ndarray  # (n,) geodesic angle between R_est and A·G per particle
    mean: float
    median: float


def project_to_so3(m: np.ndarray) -> np.ndarray:
    """Closest rotation (Frobenius norm) to a 3×3 matrix, by SVD with the determinant forced to +1."""
    u, _, vt = np.linalg.svd(m)
    d = np.sign(np.linalg.det(u @ vt))
    return u @ np.diag([1.0, 1.0, d]) @ vt


def _angles_deg(r_a: np.ndarray, r_b: np.ndarray) -> np.ndarray:
    dist = geodesic_distance(
        torch.as_tensor(r_a, dtype=torch.float64), torch.as_tensor(r_b, dtype=torch.float64)
    )
    return np.degrees(dist.numpy())


def _fit_rotation(r_est: np.ndarray, g: np.ndarray, seed: int) -> np.ndarray:
    """A minimising Σ‖R_est − A·G‖ (chordal L1): the best of the mean and single-particle candidates,
    refined by iteratively reweighted least squares."""
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(g), size=min(64, len(g)), replace=False)
    candidates = [project_to_so3(np.einsum("nij,nkj->ik", r_est, g))]
    candidates += [r_est[i] @ g[i].T for i in pick]
    medians = [np.median(_angles_deg(a @ g, r_est)) for a in candidates]
    a = candidates[int(np.argmin(medians))]
    for _ in range(20):
        resid = np.linalg.norm(r_est - a @ g, axis=(1, 2))
        w = 1.0 / np.maximum(resid, 1e-6)
        a_new = project_to_so3(np.einsum("n,nij,nkj->ik", w, r_est, g))
        if np.abs(a_new - a).max() < 1e-10:
            return a_new
        a = a_new
    return a


def align_rotations(r_est: np.ndarray, r_gt: np.ndarray, seed: int = 0) -> AlignmentResult:
    """Align estimated poses (n, 3, 3) to the truth over both hands; the hand with the lower median wins."""
    r_est = np.asarray(r_est, dtype=np.float64)
    r_gt = np.asarray(r_gt, dtype=np.float64)
    if r_est.shape != r_gt.shape or r_est.ndim != 3 or r_est.shape[1:] != (3, 3) or len(r_est) == 0:
        raise ValueError(f"need two non-empty (n, 3, 3) pose arrays, got {r_est.shape} and {r_gt.shape}")
    best = None
    for flip in (False, True):
        g = MIRROR @ r_gt @ MIRROR if flip else r_gt
        a = _fit_rotation(r_est, g, seed)
        errors = _angles_deg(a @ g, r_est)
        result = AlignmentResult(a, flip, errors, float(errors.mean()), float(np.median(errors)))
        if best is None or result.median < best.median:
            best = result
    return best


def poses_in_truth_frame(
    alignment: AlignmentResult,
    rotations: np.ndarray,
    shifts: np.ndarray,
    true_shifts: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Estimated poses (n, 3, 3), shifts (n, 2) px re-expressed in the truth's frame.

    Rotations become ``Aᵀ·R`` (mirrored back when the hand differs); shifts lose the projection of the
    least-squares 3D offset between the two maps' origins. Backprojecting these scores a map against the
    truth without interpolating it (``fsc_to_truth`` rotates the map by interpolation, which costs
    resolution that the poses did not lose). The offset is projected along each particle's own re-expressed
    rotation, so a particle posed at a symmetry mate ``S·R`` of its true pose sees it as ``(S·R)ᵀ·t``.
    """
    rot = np.einsum("ji,njk->nik", alignment.rotation, np.asarray(rotations, np.float64))
    if alignment.flip:
        rot = MIRROR @ rot @ MIRROR
    diff = np.asarray(shifts, np.float64) - np.asarray(true_shifts, np.float64)
    # A map offset t moves each projection by (Rᵀ·t)[:2] (``FrameChange.poses``): rows of Rᵀ.
    design = rot.transpose(0, 2, 1)[:, :2, :].reshape(-1, 3)
    offset, *_ = np.linalg.lstsq(design, diff.reshape(-1), rcond=None)
    return rot, np.asarray(shifts, np.float64) - (design @ offset).reshape(-1, 2)


def shift_errors(shift_est: np.ndarray, shift_gt: np.ndarray) -> np.ndarray:
    """Per-particle distance (px) between estimated and true shifts (n, 2).

    A global rotation or hand change of the map leaves image-frame shifts unchanged, so none is applied.
    """
    shift_est = np.asarray(shift_est, dtype=np.float64)
    shift_gt = np.asarray(shift_gt, dtype=np.float64)
    if shift_est.shape != shift_gt.shape or shift_est.ndim != 2 or shift_est.shape[1] != 2:
        raise ValueError(f"need two (n, 2) shift arrays, got {shift_est.shape} and {shift_gt.shape}")
    return np.linalg.norm(shift_est - shift_gt, axis=1)


def rotate_volume(vol: np.ndarray, matrix: np.ndarray, order: int = 3) -> np.ndarray:
    """``out(q) = vol(matrix · q)`` for centred (x, y, z) coordinates q of a ``V[z, y, x]`` map."""
    box = vol.shape[0]
    c = box // 2
    k = np.arange(box) - c
    z, y, x = np.meshgrid(k, k, k, indexing="ij")
    q = np.stack([x.ravel(), y.ravel(), z.ravel()])
    p = np.asarray(matrix, dtype=np.float64) @ q + c
    coords = p[::-1].reshape(3, box, box, box)
    return ndimage.map_coordinates(np.asarray(vol, np.float64), coords, order=order, mode="constant").astype(
        np.float32
    )


def align_volume(vol: np.ndarray, ref: np.ndarray, rotation: np.ndarray, flip: bool) -> np.ndarray:
    """Bring ``vol`` into the frame of ``ref``: ``vol(A·q)`` (``vol(A·F·q)`` if ``flip``), then the
    sub-voxel translation that maximises the cross-correlation with ``ref``."""
    matrix = np.asarray(rotation) @ MIRROR if flip else np.asarray(rotation)
    rotated = rotate_volume(vol, matrix)
    return translate(rotated, best_translation(rotated, ref))


@dataclass
class FrameChange:
    """How a map ``vol`` is brought into the frame of ``ref``: ``aligned(q) = vol(M·(q − t))``.

    ``M = rotation`` (``rotation·F`` when ``flip``); ``translation`` t is in voxels, (x, y, z) order.
    """

    rotation: np.ndarray
    flip: bool
    translation: np.ndarray
    aligned: np.ndarray

    def poses(self, rotations: np.ndarray, shifts_px: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Poses (n, 3, 3) and shifts (n, 2) px of ``vol``'s particles re-expressed for the aligned map.

        ``R' = Aᵀ·R`` (``F·Aᵀ·R·F`` when the hand flips: both give the same images), and a map moved by t
        moves each projection by ``(R'ᵀ·t)[:2]``, which the shift (RELION sign) absorbs.
        """
        rot = np.einsum("ji,njk->nik", self.rotation, np.asarray(rotations, np.float64))
        if self.flip:
            rot = MIRROR @ rot @ MIRROR
        moved = np.einsum("nji,j->ni", rot, self.translation)[:, :2]
        return rot, np.asarray(shifts_px, np.float64) + moved


def align_maps(
    vol: np.ndarray, ref: np.ndarray, seed: int = 0, map_fn: Callable = map, between: Callable | None = None
) -> FrameChange:
    """The global rotation, hand and sub-voxel translation that best bring ``vol`` onto ``ref`` (``map_fn``
    and ``between`` as in :func:`search_alignment`)."""
    rotation, flip = search_alignment(vol, ref, seed=seed, map_fn=map_fn, between=between)
    return _frame_change(vol, ref, rotation, flip)


def _frame_change(vol: np.ndarray, ref: np.ndarray, rotation: np.ndarray, flip: bool) -> FrameChange:
    """``vol`` turned by ``rotation`` (and mirrored when ``flip``), then moved onto ``ref`` by translation."""
    rotated = rotate_volume(vol, rotation @ MIRROR if flip else rotation)
    t_xyz = best_translation(rotated, np.asarray(ref))
    return FrameChange(rotation, flip, t_xyz, translate(rotated, t_xyz))


def _lowpass_crop(vol: np.ndarray, box: int, sigma_frac: float = 0.25) -> torch.Tensor:
    """Fourier-crop to ``box`` with a Gaussian low-pass (σ = ``sigma_frac`` of the new Nyquist)."""
    size = vol.shape[0]
    f = np.fft.fftshift(np.fft.fftn(np.fft.ifftshift(vol)))
    new = min(box, size)
    start = size // 2 - new // 2
    f = f[start : start + new, start : start + new, start : start + new]
    k = np.arange(new) - new // 2
    kz, ky, kx = np.meshgrid(k, k, k, indexing="ij")
    f = f * np.exp(-(kz * kz + ky * ky + kx * kx) / (2 * (sigma_frac * new / 2) ** 2))
    out = np.fft.fftshift(np.fft.ifftn(np.fft.ifftshift(f))).real
    out = out - out.mean()
    return torch.as_tensor(out / np.linalg.norm(out), dtype=torch.float32)


def _scores(
    vol: torch.Tensor,
    ref_f: torch.Tensor,
    matrices: torch.Tensor,
    batch: int = 64,
    between: Callable | None = None,
) -> torch.Tensor:
    """Translation-invariant correlation of ``vol(M·q)`` with the reference, for each matrix M (``between()``
    is called before each batch of ``batch`` matrices)."""
    box = vol.shape[0]
    k = torch.arange(box, dtype=torch.float32) - box // 2
    z, y, x = torch.meshgrid(k, k, k, indexing="ij")
    q = torch.stack([x, y, z], -1).reshape(-1, 3)
    out = []
    for start in range(0, len(matrices), batch):
        if between is not None:
            between()
        m = matrices[start : start + batch].to(torch.float32)
        grid = ((q @ m.transpose(-1, -2)) + box // 2) * (2.0 / (box - 1)) - 1.0
        rotated = torch.nn.functional.grid_sample(
            vol.expand(len(m), 1, box, box, box),
            grid.reshape(len(m), box, box, box, 3),
            mode="bilinear",
            padding_mode="zeros",
            align_corners=True,
        )[:, 0]
        xc = torch.fft.irfftn(
            ref_f * torch.fft.rfftn(rotated, dim=(1, 2, 3)).conj(), s=(box,) * 3, dim=(1, 2, 3)
        )
        norms = rotated.flatten(1).norm(dim=1).clamp_min(1e-12)
        out.append(xc.flatten(1).amax(dim=1) / norms)
    return torch.cat(out)


def _local_search(
    top: torch.Tensor, steps: list[tuple[Callable, float]], gen: torch.Generator
) -> tuple[float, torch.Tensor]:
    """(score, rotation) after local searches around ``top`` (3, 3): at each step, ``top`` and 100 rotations
    ``exp(ω)·top`` (ω ~ N(0, spread²) rad per axis) are scored by that step's function of the candidates
    (n, 3, 3), and the best becomes ``top``."""
    for score, spread in steps:
        near = axis_angle_to_matrix(torch.randn(100, 3, generator=gen) * spread) @ top
        local = torch.cat([top[None], near])
        scores = score(local)
        top = local[int(scores.argmax())]
    return float(scores.max()), top


def _distinct_best(
    cands: torch.Tensor, scores: torch.Tensor, count: int, min_angle_deg: float
) -> list[torch.Tensor]:
    """The ``count`` best rotations of ``cands`` (n, 3, 3), each ``min_angle_deg`` from the better ones."""
    min_angle = float(np.deg2rad(min_angle_deg))
    picked: list[torch.Tensor] = []
    for i in torch.argsort(scores, descending=True).tolist():
        if all(float(geodesic_distance(cands[i][None], p[None])[0]) > min_angle for p in picked):
            picked.append(cands[i])
            if len(picked) == count:
                break
    return picked


def search_hand(
    vol: np.ndarray,
    ref: np.ndarray,
    flip: bool,
    n_coarse: int = 2000,
    seed: int = 0,
    basins: int = 6,
    between: Callable | None = None,
) -> tuple[float, torch.Tensor]:
    """(correlation, A) of the rotation A that best brings ``vol`` (mirrored when ``flip``) onto ``ref``.

    ``n_coarse`` uniform random rotations (about 19° apart at 2000) on strongly low-passed 24³ maps; the
    ``basins`` best of them at least 25° apart are each refined locally there, the two that fit best on
    32³ maps with more detail are refined further on those, and the better one wins. One basin is not
    enough: at the coarse stage a pseudo-symmetric particle's mates (a ring's 60° step) score alike, and
    the right one is told apart only with more detail. Each hand draws from its own random stream, so the two
    hands can be searched apart (one per process) with the same result.
    """
    vol = np.asarray(vol, np.float64)
    ref = np.asarray(ref, np.float64)
    gen = torch.Generator().manual_seed(2 * seed + int(flip))
    mirror = torch.as_tensor(MIRROR, dtype=torch.float32)

    crops: dict[tuple[int, float], tuple[torch.Tensor, torch.Tensor]] = {}  # each crop made once

    def scored(box: int, sigma: float, cands: torch.Tensor) -> torch.Tensor:
        if (box, sigma) not in crops:
            crops[box, sigma] = (
                _lowpass_crop(vol, box, sigma),
                torch.fft.rfftn(_lowpass_crop(ref, box, sigma)),
            )
        small, ref_f = crops[box, sigma]
        return _scores(small, ref_f, cands @ mirror if flip else cands, between=between)

    def refined(top: torch.Tensor, stages: tuple) -> tuple[float, torch.Tensor]:
        steps = [(partial(scored, box, sigma), spread) for box, sigma, spread in stages]
        return _local_search(top, steps, gen)

    cands = random_rotations(n_coarse, generator=gen)
    starts = _distinct_best(cands, scored(24, 0.25, cands), basins, 25.0)
    starts = [refined(top, ((24, 0.25, 0.12),))[1] for top in starts]
    detail = scored(32, 0.5, torch.stack(starts))  # the basins told apart with detail; the best two go on
    fine = ((32, 0.5, 0.06), (32, 0.5, 0.03), (32, 0.5, 0.015))
    best_score, best = max(
        (refined(starts[i], fine) for i in detail.argsort(descending=True)[:2].tolist()),
        key=lambda found: found[0],
    )
    return best_score, best


def search_alignment(
    vol: np.ndarray,
    ref: np.ndarray,
    n_coarse: int = 2000,
    seed: int = 0,
    map_fn: Callable = map,
    between: Callable | None = None,
) -> tuple[np.ndarray, bool]:
    """(A, flip) maximising the correlation of low-passed maps over rotations, both hands and translations
    (:func:`search_hand` for each hand; ``map_fn`` maps it over the two hands, e.g. one per process).
    ``between()`` is called between batches of about 64 rotations scored; it may raise to abandon the
    search (a run's stop)."""
    found = list(
        map_fn(lambda flip: search_hand(vol, ref, flip, n_coarse, seed, between=between), (False, True))
    )
    flip = found[1][0] > found[0][0]
    return project_to_so3(found[int(flip)][1].double().numpy()), flip


def register_maps(vol: np.ndarray, ref: np.ndarray, seed: int = 0) -> FrameChange:
    """The small rotation and sub-voxel translation that bring ``vol`` onto ``ref`` (same hand, no flip).

    For two maps already in one frame that drift apart by a degree or so (each half of a gold-standard
    run refines its own map, and a global rotation costs nothing): local searches around the identity of
    shrinking spread (3.4° down to 0.4°) on 32³ maps, then the translation.
    """
    vol = np.asarray(vol, np.float64)
    small = _lowpass_crop(vol, 32, 0.5)
    ref_f = torch.fft.rfftn(_lowpass_crop(np.asarray(ref, np.float64), 32, 0.5))
    gen = torch.Generator().manual_seed(seed)
    steps = [(partial(_scores, small, ref_f), spread) for spread in (0.06, 0.03, 0.015, 0.0075)]
    _, top = _local_search(torch.eye(3), steps, gen)
    return _frame_change(vol, ref, project_to_so3(top.double().numpy()), False)


@dataclass
class MapComparison:
    """FSC of a map against the truth after alignment, with the alignment used and the aligned map."""

    freq: np.ndarray  # 1/Å
    fsc: np.ndarray
    rotation: np.ndarray
    flip: bool
    aligned: np.ndarray

    def resolution(self, threshold: float) -> float:
        """Resolution (Å) where the FSC against the truth first falls below ``threshold``."""
        return resolution_at(self.freq, self.fsc, threshold)


def fsc_to_truth(
    vol: np.ndarray,
    truth: np.ndarray,
    voxel_size: float,
    rotation: np.ndarray | None = None,
    flip: bool | None = None,
    n_coarse: int = 2000,
) -> MapComparison:
    """FSC of ``vol`` against ``truth`` after a global rotation and hand (searched when not given) and the
    best sub-voxel translation."""
    vol = np.asarray(vol, dtype=np.float32)
    truth = np.asarray(truth, dtype=np.float32)
    if vol.shape != truth.shape:
        raise ValueError(f"the map ({vol.shape}) and the true map ({truth.shape}) must have the same box")
    if rotation is None:
        rotation, flip = search_alignment(vol, truth, n_coarse)
    aligned = align_volume(vol, truth, rotation, bool(flip))
    freq, values = fsc(aligned, truth, voxel_size)
    return MapComparison(freq, values, np.asarray(rotation), bool(flip), aligned)
