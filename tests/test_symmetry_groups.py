"""Point groups in RELION's orientations: orders, closure, hand-checked axes; a symmetrised grid."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_cryospin.geometry.symmetry import canonical, group_operators, parse_group, symmetrize_grid
from napari_cryospin.metrics.alignment import rotate_volume


def _contains(ops: np.ndarray, m: np.ndarray) -> bool:
    return bool(np.abs(ops - m).max(axis=(1, 2)).min() < 1e-5)


def _axes(ops: np.ndarray, fold: int) -> np.ndarray:
    """The distinct unit axes (sign-normalised) of the operators rotating by ±2π/fold."""
    out = []
    for g in ops:
        angle = np.arccos(np.clip((np.trace(g) - 1) / 2, -1, 1))
        if abs(angle - 2 * np.pi / fold) < 1e-5:
            w, v = np.linalg.eigh(g + g.T)  # the axis: eigenvalue 2 of g + gᵀ
            a = v[:, np.argmax(w)]
            a = a if a[np.argmax(np.abs(a) > 1e-6)] > 0 else -a
            if not any(np.abs(a - b).max() < 1e-5 for b in out):
                out.append(a)
    return np.array(out)


def _has_axis(ops: np.ndarray, fold: int, axis) -> bool:
    a = np.asarray(axis, np.float64) / np.linalg.norm(axis)
    return bool(np.abs(np.abs(_axes(ops, fold) @ a) - 1).min() < 1e-5)


@pytest.mark.parametrize(
    "name, order",
    [("C1", 1), ("C2", 2), ("c5", 5), ("C12", 12), ("D2", 4), ("D7", 14), ("T", 12), ("O", 24), ("I", 60)],
)
def test_orders_closure_and_identity_first(name, order):
    ops = group_operators(name)
    assert ops.shape == (order, 3, 3)
    assert np.allclose(ops[0], np.eye(3))
    assert np.allclose(ops @ ops.transpose(0, 2, 1), np.eye(3), atol=1e-9)
    assert np.allclose(np.linalg.det(ops), 1)
    for a in ops:  # products and inverses stay in the set
        assert _contains(ops, a.T)
        for b in ops:
            assert _contains(ops, a @ b)


def test_hand_checked_generators_in_relion_orientation():
    c4 = group_operators("C4")
    assert _contains(c4, np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1]]))  # 90° about z
    d2 = group_operators("D2")
    for diag in ([1, -1, -1], [-1, 1, -1], [-1, -1, 1]):  # 2-folds on x, y, z
        assert _contains(d2, np.diag(diag).astype(float))
    d5 = group_operators("D5")
    assert _has_axis(d5, 5, [0, 0, 1]) and _has_axis(d5, 2, [1, 0, 0])
    assert not _has_axis(d5, 2, [0, 1, 0])  # odd n: the 2-folds are x and its 36° turns, not y
    t = group_operators("T")  # RELION: 3-fold on z, 2-fold on (0, 0.816496, 0.577350)
    assert _has_axis(t, 3, [0, 0, 1]) and _has_axis(t, 2, [0, 0.816496, 0.577350])
    assert len(_axes(t, 2)) == 3 and len(_axes(t, 3)) == 4  # three 2-fold and four 3-fold axes
    o = group_operators("O")  # RELION: 4-folds on the coordinate axes, 3-fold on (1, 1, 1)
    for axis in ([1, 0, 0], [0, 1, 0], [0, 0, 1]):
        assert _has_axis(o, 4, axis)
    assert _has_axis(o, 3, [1, 1, 1]) and _has_axis(o, 2, [1, 1, 0])
    i = group_operators("I")  # RELION's default I = I2: 2-folds on x, y, z; 5-fold in the xz plane
    for axis in ([1, 0, 0], [0, 1, 0], [0, 0, 1]):
        assert _has_axis(i, 2, axis)
    golden = (1 + np.sqrt(5)) / 2
    assert _has_axis(i, 5, [1, 0, golden]) and _has_axis(i, 3, [0, 1, golden**2])
    assert len(_axes(i, 5)) == 6 and len(_axes(i, 3)) == 10 and len(_axes(i, 2)) == 15


def test_names_are_checked():
    assert parse_group(" d7 ") == ("D", 7) and canonical("i") == "I" and canonical("c1") == "C1"
    for bad in ("D1", "C0", "X3", "I3", "C", ""):
        with pytest.raises(ValueError, match="--symmetry"):
            parse_group(bad)


def test_symmetrized_grid_is_invariant_and_keeps_a_symmetric_one():
    box = 24
    rng = np.random.default_rng(1)
    vol = np.zeros((box, box, box))
    z, y, x = np.meshgrid(*[np.arange(box) - box // 2] * 3, indexing="ij")
    for _ in range(5):
        c = rng.uniform(-6, 6, size=3)
        vol += np.exp(-((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) / 6.0)
    vol *= x**2 + y**2 + z**2 < 10**2  # inside the box whatever the turn
    ops = group_operators("C4")  # maps the grid onto itself, so the resampling is exact
    sym = symmetrize_grid(torch.as_tensor(vol), ops).numpy()
    assert not np.allclose(sym, vol, atol=1e-2)
    for g in ops:
        assert np.allclose(rotate_volume(sym, g, order=1), sym, atol=1e-5)  # V(g·p) = V(p)
    again = symmetrize_grid(torch.as_tensor(sym), ops).numpy()
    assert np.allclose(again, sym, atol=1e-6)
    both = symmetrize_grid(torch.complex(torch.as_tensor(vol), -torch.as_tensor(vol)), ops)
    assert torch.allclose(both.imag, -both.real)
