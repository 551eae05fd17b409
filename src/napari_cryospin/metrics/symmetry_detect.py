"""Which point group a map obeys: its axes found by rotating the map onto itself, scored against noise.

The map (or, better, its two independent half maps) is low-passed and cropped to ``DETECT_BOX``, masked by
a soft sphere about its centre of mass, and every candidate operator g is scored by the correlation of one
map with the other turned by g (``A`` with ``B∘g``), divided by the correlation of ``A`` with ``B``: the
noise of the halves lowers both alike, so a symmetric map scores ≈ 1 at any SNR and the ratio is measured
against the map's own agreement, not against a fixed level. With a single map, ``A = B``.
- Cn (n = 2…``MAX_N``): the 2π/n turn about every direction of a Fibonacci half-sphere, the best directions
  refined locally with the whole group's score (the mean over its non-identity operators);
- Dn: the best 2-fold perpendicular to the Cn axis, scanned in 1° steps;
- T, O, I: RELION's orientation of the group turned so that its highest-order axis lies on the map's best
  axis of that order, scanned about that axis in 1° steps, then refined.
The detected group is the largest whose score reaches ``THRESHOLD``; the best one below it but above
``PSEUDO`` is reported as pseudo-symmetry, never imposed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import ndimage

from ..geometry.symmetry import axis_rotation, framed_operators, group_operators
from .alignment import _lowpass_crop
from .fsc import fsc

DETECT_BOX = 24
"""Box (px) the maps are Fourier-cropped to: the overall shape decides the symmetry, not the detail."""
DETECT_SIGMA = 1.0
"""Gaussian low-pass of the cropped maps, σ as a fraction of the cropped Nyquist (12 cycles per box)."""
MAX_N = 12
"""Highest Cn and Dn order tested."""
THRESHOLD = 0.95
"""A group is detected when its score (correlation relative to the halves' own) reaches this."""
MIN_BAND = 8
"""No group is called when the halves agree (FSC ≥ 0.5) over fewer shells than this (cycles per box): a
blurred map looks symmetric about any axis of its outline."""
SHORTLIST = 0.90
"""Groups whose low-resolution score reaches this are scored again at full resolution (``fsc_score``)."""
PSEUDO = 0.80
"""A best candidate scoring between this and ``THRESHOLD`` is reported as pseudo-symmetry."""
PRUNE = 0.65
"""Candidates whose coarse score is below this are not refined (nor their supergroups tried): refining
moves a score by a few hundredths, never from here to ``PSEUDO``."""
_DIRECTIONS = 300


@dataclass
class SymmetryReport:
    """The detected ``group`` ("C1" when none) with its ``score``, its operators' frame and axes (x, y, z
    unit vectors of the map, about ``centre`` voxels from the box centre), the best pseudo-symmetry below
    the threshold, and every candidate's score."""

    group: str
    score: float
    frame: np.ndarray  # (3, 3): the map's operators are frame · g · frameᵀ for RELION's g
    axes: dict[str, list[list[float]]]
    centre: list[float]
    pseudo: dict | None = None
    candidates: dict[str, float] = field(default_factory=dict)  # full-resolution scores (shortlist)
    coarse: dict[str, float] = field(default_factory=dict)  # low-resolution scores of every group tried
    band: int = 0  # shells (cycles per box) over which the halves agree, FSC ≥ 0.5

    def operators(self) -> np.ndarray:
        """(G, 3, 3) the detected group's operators other than the identity, in the map's x y z frame
        (``frame · g · frameᵀ``); (0, 3, 3) for C1."""
        return framed_operators(self.group, self.frame)[1:]

    def to_dict(self, imposed: str = "C1") -> dict:
        """Plain JSON for metrics.json (``imposed``: the run's ``--symmetry``)."""
        return {
            "group": self.group,
            "score": round(self.score, 4),
            "axes": self.axes,
            "centre_voxels": [round(c, 2) for c in self.centre],
            "frame": np.round(self.frame, 5).tolist(),
            "pseudo": self.pseudo,
            "candidates": {k: round(v, 4) for k, v in self.candidates.items()},
            "coarse": {k: round(v, 4) for k, v in self.coarse.items()},
            "imposed": imposed,
            "threshold": THRESHOLD,
            "agreement_band": self.band,
        }

    def message(self, imposed: str = "C1") -> str:
        """One line for the CLI verdict and the dock."""
        if self.group != "C1" and self.group != imposed:
            text = f"the map looks {self.group} (score {self.score:.2f} to its rotated copies)"
            return text + ("; its axes are in metrics.json" if imposed == "C1" else "")
        if self.group != "C1":
            return f"{imposed} imposed (the map scores {self.score:.2f} to its rotated copies)"
        if self.band < MIN_BAND:
            return f"symmetry not judged: the half maps agree (FSC 0.5) only to {self.band} cycles per box"
        if self.pseudo is not None:
            p = self.pseudo
            return (
                f"no symmetry found; pseudo-{p['group']} (score {p['score']:.2f}, below {THRESHOLD}): "
                "not symmetrised"
            )
        return "no symmetry found (C1)"


class _Scorer:
    """Correlation of map A with map B turned by operators about the maps' centre of mass (masked)."""

    def __init__(self, map_a: np.ndarray, map_b: np.ndarray):
        a = _lowpass_crop(map_a, DETECT_BOX, DETECT_SIGMA)
        b = _lowpass_crop(map_b, DETECT_BOX, DETECT_SIGMA)
        box = a.shape[0]
        k = torch.arange(box, dtype=torch.float32) - box // 2
        z, y, x = torch.meshgrid(k, k, k, indexing="ij")
        self.q = torch.stack([x, y, z], -1).reshape(-1, 3)
        both = (a + b).clamp_min(0).reshape(-1)
        self.centre = (both[:, None] * self.q).sum(0) / both.sum().clamp_min(1e-12)
        r = (self.q - self.centre).norm(dim=1)
        t = ((r - 0.3 * box) / (0.12 * box)).clamp(0, 1)
        self.mask = 0.5 * (1 + torch.cos(torch.pi * t))
        self.box = box
        self.a = self._normalise(a.reshape(-1))
        self.b = b[None, None]
        self.baseline = 1.0
        self.baseline = float(self._sample(self.q - self.centre)[0])

    def _normalise(self, v: torch.Tensor) -> torch.Tensor:
        v = v * self.mask
        v = v - (v * self.mask).sum() / self.mask.sum() * self.mask
        return v / v.norm().clamp_min(1e-12)

    def __call__(self, ops: torch.Tensor, batch: int = 48) -> torch.Tensor:
        """Relative correlation (n,) of ``A`` with ``B(g·(q − c) + c)`` for operators ``ops`` (n, 3, 3)."""
        out = []
        for s in range(0, len(ops), batch):
            m = ops[s : s + batch].float()
            out.append(self._sample((self.q - self.centre) @ m.transpose(-1, -2)))
        return torch.cat(out)

    def _sample(self, p: torch.Tensor) -> torch.Tensor:
        """Relative correlation (n,) of ``A`` with ``B`` read at points ``p`` (n, V, 3) about the centre."""
        p = p.reshape(-1, len(self.q), 3) + self.centre
        grid = (p + self.box // 2) * (2.0 / (self.box - 1)) - 1.0
        turned = torch.nn.functional.grid_sample(
            self.b.expand(len(p), 1, -1, -1, -1),
            grid.reshape(len(p), self.box, self.box, self.box, 3),
            mode="bilinear",
            padding_mode="zeros",
            align_corners=True,
        ).reshape(len(p), -1)
        turned = turned * self.mask
        turned = turned - (turned * self.mask).sum(1, keepdim=True) / self.mask.sum() * self.mask
        return (turned @ self.a) / turned.norm(dim=1).clamp_min(1e-12) / max(self.baseline, 1e-6)

    def group_score(self, frame: np.ndarray, ops: np.ndarray) -> float:
        """Mean relative correlation over the group's non-identity operators, in ``frame``."""
        mats = torch.as_tensor(frame @ ops[1:] @ frame.T)
        return float(self(mats).mean())


def _half_sphere(n: int) -> np.ndarray:
    """n Fibonacci directions (n, 3) on the upper half-sphere (an axis and its negative are one axis)."""
    i = np.arange(n) + 0.5
    z = i / n
    phi = np.pi * (1 + 5**0.5) * i
    r = np.sqrt(1 - z * z)
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], 1)


def _frame_from_axis(axis: np.ndarray) -> np.ndarray:
    """A rotation taking z to ``axis`` (the frame of Cn / Dn about that axis)."""
    u = axis / np.linalg.norm(axis)
    helper = np.array([1.0, 0, 0]) if abs(u[0]) < 0.9 else np.array([0, 1.0, 0])
    x = np.cross(helper, u)
    x /= np.linalg.norm(x)
    return np.stack([x, np.cross(u, x), u], 1)


def _taking(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """A rotation taking unit vector ``a`` to ``b``."""
    return _frame_from_axis(b) @ _frame_from_axis(a).T


def _axis_angle(axis: np.ndarray, angle: float) -> np.ndarray:
    u = axis / np.linalg.norm(axis)
    k = np.array([[0, -u[2], u[1]], [u[2], 0, -u[0]], [-u[1], u[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)


def _refine_frame(
    scorer: _Scorer, frame: np.ndarray, ops: np.ndarray, rng: np.random.Generator
) -> tuple[float, np.ndarray]:
    """Local search of the group's frame: small random turns (6°, 2°, 0.7°), the best kept each round."""
    best, score = frame, scorer.group_score(frame, ops)
    for spread in (6.0, 2.0, 0.7):
        for w in rng.normal(size=(10, 3)) * np.radians(spread):
            trial = _axis_angle(w, np.linalg.norm(w)) @ best
            s = scorer.group_score(trial, ops)
            if s > score:
                best, score = trial, s
    return score, best


def _axes_of(frame: np.ndarray, ops: np.ndarray) -> dict[str, list[list[float]]]:
    """The distinct rotation axes of ``frame · g · frameᵀ``, by fold (x, y, z unit vectors): an axis's
    fold is one more than the number of non-identity operators about it."""
    axes: list[np.ndarray] = []
    counts: list[int] = []
    for g in frame @ ops[1:] @ frame.T:
        w, v = np.linalg.eigh(g + g.T)
        a = v[:, np.argmax(w)]
        a = a if a[np.argmax(np.abs(a) > 1e-6)] > 0 else -a
        match = [i for i, b in enumerate(axes) if abs(abs(np.dot(a, b)) - 1) < 1e-4]
        if match:
            counts[match[0]] += 1
        else:
            axes.append(a)
            counts.append(1)
    out: dict[str, list[list[float]]] = {}
    for a, c in zip(axes, counts, strict=True):
        out.setdefault(f"{c + 1}-fold", []).append(np.round(a, 4).tolist())
    return dict(sorted(out.items(), key=lambda kv: -int(kv[0].split("-")[0])))


def _candidates(scorer: _Scorer, rng: np.random.Generator) -> dict[str, tuple[float, np.ndarray]]:
    """Each group's low-resolution score and frame: Cn about the best direction, Dn's 2-fold perpendicular
    to it, T, O and I about the best axis of their highest order (groups below ``PRUNE`` not refined)."""
    dirs = _half_sphere(_DIRECTIONS)
    cands: dict[str, tuple[float, np.ndarray]] = {}
    best_axis: dict[int, np.ndarray] = {}
    for n in range(2, MAX_N + 1):
        turns = torch.as_tensor(np.stack([_axis_angle(d, 2 * np.pi / n) for d in dirs]))
        coarse = scorer(turns).numpy()
        frame = _frame_from_axis(dirs[int(np.argmax(coarse))])
        if coarse.max() >= PRUNE:
            cands[f"C{n}"] = _refine_frame(scorer, frame, group_operators(f"C{n}"), rng)
        else:
            cands[f"C{n}"] = (float(coarse.max()), frame)
        best_axis[n] = cands[f"C{n}"][1][:, 2]
    for n in range(2, MAX_N + 1):  # Dn: the 2-fold perpendicular to the Cn axis, in 1° steps
        if cands[f"C{n}"][0] < PRUNE or cands["C2"][0] < PRUNE:
            continue
        frame_c = cands[f"C{n}"][1]
        ops = group_operators(f"D{n}")
        trials = [frame_c @ _axis_angle(np.array([0, 0, 1.0]), np.radians(a)) for a in np.arange(0, 180, 1.0)]
        flip = axis_rotation((1, 0, 0), 2)  # Dn's 2-fold on x, in the Cn frame
        two = scorer(torch.as_tensor(np.stack([f @ flip @ f.T for f in trials]))).numpy()
        if two.max() >= PRUNE:
            cands[f"D{n}"] = _refine_frame(scorer, trials[int(np.argmax(two))], ops, rng)
    for name, fold, axis in (
        ("T", 3, (0, 0, 1.0)),
        ("O", 4, (0, 0, 1.0)),
        ("I", 5, (0.525731114, 0, 0.850650807)),
    ):
        if min(cands["C2"][0], cands["C3"][0], cands[f"C{fold}"][0]) < PRUNE:
            continue
        ops = group_operators(name)
        base = _taking(np.asarray(axis) / np.linalg.norm(axis), best_axis[fold])
        u = best_axis[fold]
        trials = [_axis_angle(u, np.radians(a)) @ base for a in np.arange(0, 360 / fold, 1.0)]
        few = ops[1 : min(len(ops), 12)]
        scores = [float(scorer(torch.as_tensor(f @ few @ f.T)).mean()) for f in trials]
        if max(scores) >= PRUNE:
            cands[name] = _refine_frame(scorer, trials[int(np.argmax(scores))], ops, rng)
    return cands


def detect_symmetry(map_a: np.ndarray, map_b: np.ndarray | None = None, seed: int = 0) -> SymmetryReport:
    """The point group ``map_a`` (and its independent half ``map_b``, V[z, y, x]) obeys; see module doc."""
    scorer = _Scorer(np.asarray(map_a), np.asarray(map_a if map_b is None else map_b))
    rng = np.random.default_rng(seed)
    cands = _candidates(scorer, rng)
    centre = scorer.centre.numpy() * (np.asarray(map_a).shape[0] / scorer.box)
    coarse = {k: float(s) for k, (s, _) in cands.items()}
    full_a = np.asarray(map_a, np.float64)
    full_b = full_a if map_b is None else np.asarray(map_b, np.float64)
    scores = {
        k: fsc_score(full_a, full_b, cands[k][1], group_operators(k), centre)
        for k, s in coarse.items()
        if s >= SHORTLIST
    }
    band = _agreement_band(full_a, full_b, centre)
    passing = [k for k, s in scores.items() if s >= THRESHOLD] if band >= MIN_BAND else []
    if passing:
        group = max(passing, key=lambda k: (len(group_operators(k)), scores[k]))
        frame = cands[group][1]
        axes = _axes_of(frame, group_operators(group))
        return SymmetryReport(group, scores[group], frame, axes, centre.tolist(), None, scores, coarse, band)
    pseudo = None
    if scores and max(scores.values()) >= PSEUDO:
        top = max(scores, key=scores.get)
        pseudo = {
            "group": top,
            "score": round(scores[top], 4),
            "axes": _axes_of(cands[top][1], group_operators(top)),
        }
    return SymmetryReport("C1", 1.0, np.eye(3), {}, centre.tolist(), pseudo, scores, coarse, band)


def _turned(vol: np.ndarray, m: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """``vol(m·(q − c) + c)`` for centred (x, y, z) voxel coordinates q (cubic spline, zero outside)."""
    box = vol.shape[0]
    k = np.arange(box) - box // 2
    z, y, x = np.meshgrid(k, k, k, indexing="ij")
    q = np.stack([x.ravel(), y.ravel(), z.ravel()]) - centre[:, None]
    p = m @ q + centre[:, None] + box // 2
    return ndimage.map_coordinates(vol, p[::-1].reshape(3, box, box, box), order=3, mode="constant")


def _masked(vol: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """``vol`` under a soft sphere (edge 0.35–0.45 of the box) about ``centre`` (voxels from box centre)."""
    box = vol.shape[0]
    k = np.arange(box) - box // 2
    z, y, x = np.meshgrid(k, k, k, indexing="ij")
    r = np.sqrt((x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2)
    return vol * 0.5 * (1 + np.cos(np.pi * np.clip((r - 0.35 * box) / (0.1 * box), 0, 1)))


def _agreement_band(map_a: np.ndarray, map_b: np.ndarray, centre: np.ndarray) -> int:
    """Shells (cycles per box) over which the masked halves agree (FSC ≥ 0.5), at most 0.75 of Nyquist."""
    ref = fsc(_masked(map_a, centre), _masked(map_b, centre), 1.0)[1]
    return min(int(0.75 * map_a.shape[0] / 2), int(_shell_below_half(ref)))


def fsc_score(
    map_a: np.ndarray, map_b: np.ndarray, frame: np.ndarray, ops: np.ndarray, centre: np.ndarray
) -> float:
    """Mean over (up to 12) non-identity operators g of ``Σ n_s·FSC_s(A, B∘g) / Σ n_s·FSC_s(A, B)`` over
    the shells s (n_s voxels) where ``FSC(A, B)`` ≥ 0.5, up to 0.75 of Nyquist: the map's rotated copy
    against the map's own reproducibility, at every resolution the halves share."""
    a = _masked(map_a, centre)
    ref = fsc(a, _masked(map_b, centre), 1.0)[1]
    top = _agreement_band(map_a, map_b, centre)
    shells = np.arange(len(ref))
    weight = np.where((shells >= 1) & (shells <= top), shells.astype(np.float64) ** 2, 0.0)
    if weight.sum() == 0:
        return 0.0
    mats = frame @ ops[1:] @ frame.T
    if len(mats) > 12:
        mats = mats[np.linspace(0, len(mats) - 1, 12).astype(int)]
    own = float((weight * ref).sum())
    turned = [fsc(a, _masked(_turned(map_b, m, centre), centre), 1.0)[1] for m in mats]
    return float(np.mean([(weight * t).sum() / own for t in turned]))


def _shell_below_half(curve: np.ndarray) -> float:
    """The first shell where ``curve`` falls below 0.5 (the last shell when it never does)."""
    below = np.flatnonzero(curve[1:] < 0.5)
    return float(len(curve) - 1) if below.size == 0 else float(below[0])


def group_frame(
    map_a: np.ndarray, map_b: np.ndarray, group: str, seed: int = 0
) -> tuple[float, np.ndarray, np.ndarray]:
    """Where ``group``'s axes lie in a map with independent halves ``map_a``, ``map_b``: its full-resolution
    score (0 when the group's low-resolution score was below ``PRUNE``), its frame (the map's operators
    are frame · g · frameᵀ) and the centre the axes pass through (x, y, z voxels from the box centre)."""
    scorer = _Scorer(np.asarray(map_a), np.asarray(map_b))
    cands = _candidates(scorer, np.random.default_rng(seed))
    centre = scorer.centre.numpy() * (np.asarray(map_a).shape[0] / scorer.box)
    if group not in cands or cands[group][0] < PRUNE:
        return 0.0, np.eye(3), centre
    frame = cands[group][1]
    full_a, full_b = np.asarray(map_a, np.float64), np.asarray(map_b, np.float64)
    return fsc_score(full_a, full_b, frame, group_operators(group), centre), frame, centre
