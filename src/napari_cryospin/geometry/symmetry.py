"""Point groups C1, Cn, Dn, T, O, I as rotation matrices in RELION's orientations, and a grid symmetrised
over them (the map's symmetry: ``V(g·p) = V(p)`` for every operator g, in the map's x y z frame).

Orientations follow RELION's ``symmetries.cpp``: Cn has its n-fold on z; Dn adds a 2-fold on x; T has a
3-fold on z and a 2-fold on (0, 0.816496, 0.577350); O a 4-fold on z and a 3-fold on (1, 1, 1)/√3; I is
RELION's default I (= I2): 2-folds on x, y and z, a 5-fold on (0.525731, 0, 0.850651) and a 3-fold on
(0, 0.356822, 0.934172). Each group is the closure of its generators.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

_T_TWO_FOLD = (0.0, 0.816496, 0.577350)
_I_FIVE_FOLD = (0.525731114, 0.0, 0.850650807)
_I_THREE_FOLD = (0.0, 0.356822076, 0.934172364)
MAX_ORDER = 40
"""Largest n of Cn and Dn accepted (RELION's limit is higher; beyond it a box-64 map cannot tell)."""


def axis_rotation(axis: tuple[float, float, float] | np.ndarray, fold: int) -> np.ndarray:
    """The rotation (3, 3) by 2π/``fold`` about ``axis`` (x, y, z; normalised here), right-handed."""
    u = np.asarray(axis, np.float64)
    u = u / np.linalg.norm(u)
    angle = 2 * np.pi / fold
    k = np.array([[0, -u[2], u[1]], [u[2], 0, -u[0]], [-u[1], u[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)


def parse_group(name: object) -> tuple[str, int]:
    """``("C", n)``, ``("D", n)``, ``("T", 12)``, ``("O", 24)`` or ``("I", 60)`` from a name such as "c5";
    ValueError naming the accepted forms otherwise."""
    text = str(name).strip().upper()
    match = re.fullmatch(r"([CD])(\d+)|([TOI])", text)
    if match and match.group(3):
        return match.group(3), {"T": 12, "O": 24, "I": 60}[match.group(3)]
    if (
        match
        and 1 <= int(match.group(2)) <= MAX_ORDER
        and not (match.group(1) == "D" and match.group(2) == "1")
    ):
        return match.group(1), int(match.group(2))
    raise ValueError(
        f"--symmetry must be C1, Cn or Dn (n ≤ {MAX_ORDER}, D from 2), T, O or I; got {name!r}. "
        "Fix: give e.g. C1 (none), C5, D7, T, O or I (RELION's orientations, docs/method.md)."
    )


def canonical(name: object) -> str:
    """The group's name as RELION writes it ("c5" → "C5")."""
    kind, n = parse_group(name)
    return kind if kind in "TOI" else f"{kind}{n}"


def _generators(kind: str, n: int) -> list[np.ndarray]:
    if kind == "C":
        return [axis_rotation((0, 0, 1), n)]
    if kind == "D":
        return [axis_rotation((0, 0, 1), n), axis_rotation((1, 0, 0), 2)]
    if kind == "T":
        return [axis_rotation((0, 0, 1), 3), axis_rotation(_T_TWO_FOLD, 2)]
    if kind == "O":
        return [axis_rotation((1, 1, 1), 3), axis_rotation((0, 0, 1), 4)]
    return [axis_rotation((0, 0, 1), 2), axis_rotation(_I_FIVE_FOLD, 5), axis_rotation(_I_THREE_FOLD, 3)]


def group_operators(name: object) -> np.ndarray:
    """The group's rotations (order, 3, 3), identity first: the closure of RELION's generators."""
    kind, n = parse_group(name)
    gens = _generators(kind, n)
    ops = [np.eye(3)]
    frontier = [np.eye(3)]
    while frontier:
        new = []
        for a in frontier:
            for g in gens:
                b = g @ a
                if min(np.abs(b - o).max() for o in ops) > 1e-4:
                    ops.append(b)
                    new.append(b)
        frontier = new
    return np.stack(ops)


def framed_operators(name: object, frame: np.ndarray) -> np.ndarray:
    """The group's rotations (order, 3, 3), identity first, in a map whose axes lie along the columns of
    ``frame`` (3, 3): ``frame · g · frameᵀ`` for RELION's g (a detected group's ``frame``)."""
    frame = np.asarray(frame, np.float64)
    return frame @ group_operators(name) @ frame.T


def symmetrize_grid(grid: torch.Tensor, operators: np.ndarray | torch.Tensor) -> torch.Tensor:
    """``mean_g grid(g·q)`` of a centred real (…, D, D, D) grid ([z, y, x], centre D // 2), by trilinear
    interpolation (zero outside); differentiable. The same call symmetrises a real-space map, a Fourier
    or Hartley grid, or a backprojection's sums (a rotation acts alike on p and on k)."""
    import torch  # here, not at module level: the settings check this module's group names without torch

    if grid.is_complex():
        return torch.complex(symmetrize_grid(grid.real, operators), symmetrize_grid(grid.imag, operators))
    d = grid.shape[-1]
    lead = grid.shape[:-3]
    ops = torch.as_tensor(np.asarray(operators), dtype=grid.dtype, device=grid.device)
    if len(ops) == 1:
        return grid
    k = torch.arange(d, dtype=grid.dtype, device=grid.device) - d // 2
    z, y, x = torch.meshgrid(k, k, k, indexing="ij")
    q = torch.stack([x, y, z], -1).reshape(-1, 3)
    flat = grid.reshape(1, -1, d, d, d)
    total = torch.zeros_like(flat)
    for g in ops:
        where = ((q @ g.T) + d // 2) * (2.0 / (d - 1)) - 1.0
        total = total + torch.nn.functional.grid_sample(
            flat, where.reshape(1, d, d, d, 3), mode="bilinear", padding_mode="zeros", align_corners=True
        )
    return (total / len(ops)).reshape(*lead, d, d, d)


def expand_poses(
    rotations: np.ndarray,
    shifts_px: np.ndarray,
    operators: np.ndarray,
    centre_px: np.ndarray | tuple[float, float, float] = (0.0, 0.0, 0.0),
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pose with its symmetry mates, as RELION's ``relion_particle_symmetry_expand`` writes them.

    ``rotations`` (n, 3, 3) and ``shifts_px`` (n, 2) (RELION's origin sign) of particles of a map with
    ``V(c + g·(p − c)) = V(p)`` for each operator g of ``operators`` (G, 3, 3, identity included) about
    ``centre_px`` c (x, y, z pixels from the box centre; 0 for a map in its group's frame). Each mate
    ``R' = g·R``, ``s' = s + ((R'ᵀ − Rᵀ)·c)[:2]`` gives the particle's image again. Returns the rotations
    (n·G, 3, 3), shifts (n·G, 2) and the particle each row came from (n·G,), a particle's mates together.
    """
    rot = np.asarray(rotations, np.float64)
    ops = np.asarray(operators, np.float64)
    centre = np.asarray(centre_px, np.float64)
    mates = np.einsum("gij,njk->ngik", ops, rot)  # (n, G, 3, 3)
    moved = (
        np.einsum("ngji,j->ngi", mates, centre)[..., :2] - np.einsum("nji,j->ni", rot, centre)[:, None, :2]
    )
    shifts = np.asarray(shifts_px, np.float64)[:, None, :] + moved
    index = np.repeat(np.arange(len(rot)), len(ops))
    return mates.reshape(-1, 3, 3), shifts.reshape(-1, 2), index
