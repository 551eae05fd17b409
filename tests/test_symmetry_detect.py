"""Symmetry detection on small synthetic maps: none in an asymmetric map, Cn and Dn with their axes found
in a tilted frame, and a near-C2 map reported as no symmetry (shortlisted, refused at full resolution)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from napari_cryospin.geometry.symmetry import axis_rotation, group_operators, symmetrize_grid
from napari_cryospin.metrics.symmetry_detect import THRESHOLD, detect_symmetry
from test_reconstruction import _blob_volume

TILT = axis_rotation((1, 2, 0.5), 9)  # 40° about a generic axis: the groups' axes off the grid's


def _map(seed: int = 3) -> np.ndarray:
    return ndimage.gaussian_filter(_blob_volume(32, seed=seed), 1.0)


def _symmetrized(vol: np.ndarray, name: str) -> np.ndarray:
    ops = TILT @ group_operators(name) @ TILT.T
    return symmetrize_grid(torch.as_tensor(vol, dtype=torch.float64), ops).numpy()


def _angle_deg(a, b) -> float:
    return float(np.degrees(np.arccos(min(1.0, abs(np.dot(a, b)) / np.linalg.norm(a) / np.linalg.norm(b)))))


def test_an_asymmetric_map_is_c1():
    report = detect_symmetry(_map())
    assert report.group == "C1" and report.pseudo is None
    assert "rerun" not in report.message()


@pytest.mark.parametrize("name, fold", [("C5", 5), ("D3", 3)])
def test_a_symmetric_map_is_found_with_its_axis(name, fold):
    report = detect_symmetry(_symmetrized(_map(), name))
    assert report.group == name and report.score >= THRESHOLD
    (axis,) = report.axes[f"{fold}-fold"]
    assert _angle_deg(axis, TILT[:, 2]) < 3.0  # the group's z axis, turned by the tilt
    assert report.message() == (
        f"the map looks {name} (score {report.score:.2f} to its rotated copies); its axes are in metrics.json"
    )
    assert report.to_dict(imposed="C1")["group"] == name


def test_a_near_c2_map_is_not_called_symmetric():
    vol = _symmetrized(_map(), "C2") + 0.15 * _map(seed=9)
    report = detect_symmetry(vol)
    assert report.group == "C1"
    assert "C2" in report.candidates  # near-C2 at low resolution, refused at full resolution
    assert report.candidates["C2"] < THRESHOLD
