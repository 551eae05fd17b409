"""bench/panel.py: symmetry operators found from a model's chains, and the panel's table."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from bench_scripts import import_bench


@pytest.fixture(scope="module")
def panel():
    return import_bench("panel")


def _pdb(chains: dict[str, tuple[str, np.ndarray]]) -> str:
    lines, serial = [], 1
    for chain, (resname, xyz) in chains.items():
        for i, (x, y, z) in enumerate(xyz, start=1):
            lines.append(
                f"ATOM  {serial:5d}  CA  {resname} {chain}{i:4d}    {x:8.3f}{y:8.3f}{z:8.3f}  1.00 20.00"
                f"           C"
            )
            serial += 1
        lines.append("TER")
    return "\n".join([*lines, "END", ""])


def _chain(n: int, seed: int) -> np.ndarray:
    steps = np.random.default_rng(seed).normal(size=(n, 3))
    return np.cumsum(3.8 * steps / np.linalg.norm(steps, axis=1, keepdims=True), axis=0)


def test_chain_operators_find_the_c2_of_a_dimer_in_the_model_frame(panel, tmp_path):
    a = _chain(40, 0)
    s = Rotation.from_rotvec(np.pi * np.array([0.6, 0.0, 0.8])).as_matrix()
    centre = a.mean(0) + np.array([6.0, -4.0, 2.0])  # the axis does not pass through the origin
    b = (a - centre) @ s.T + centre
    path = tmp_path / "dimer.pdb"
    path.write_text(_pdb({"A": ("ALA", a), "B": ("ALA", b)}))
    ops = panel.chain_symmetry_operators(path)
    assert {op["chains"] for op in ops} == {"B->A", "A->B"}
    for op in ops:
        assert np.allclose(op["rotation"], s, atol=1e-4)
        assert op["overlap"] == 1.0 and abs(op["angle_deg"] - 180.0) < 0.01


def test_chain_operators_reject_copies_that_are_not_a_symmetry_of_the_whole(panel, tmp_path):
    a = _chain(40, 1)
    s = Rotation.from_rotvec(np.pi * np.array([0.0, 1.0, 0.0])).as_matrix()
    b = (a - a.mean(0)) @ s.T + a.mean(0) + np.array([30.0, 0.0, 0.0])
    other = _chain(40, 2) + np.array([0.0, 60.0, 0.0])  # a third, different chain off the pair's axis
    path = tmp_path / "asym.pdb"
    path.write_text(_pdb({"A": ("ALA", a), "B": ("ALA", b), "C": ("GLY", other)}))
    assert panel.chain_symmetry_operators(path) == []
    assert len(panel.chain_symmetry_operators(path, min_overlap=0.5)) == 2


def test_table_row_ratios_and_missing_values(panel):
    score = {"rot_median": 1.2, "rot_mean": 3.4, "shift_median": 0.5, "fsc05": 12.0, "fsc0143": 9.0}
    row = panel.table_row(
        "dimer", score, 10.0, 7.2, {"wall_s": 300.0, "peak_rss_mb": 900.0, "load_before": 2.5}
    )
    assert row["ratio05"] == pytest.approx(1.2)
    assert row["ratio0143"] == pytest.approx(0.8)
    assert row["wall_min"] == pytest.approx(5.0)
    bare = panel.table_row("ribosome70s", score, 10.0, None, None)
    assert bare["ratio0143"] is None and bare["wall_min"] is None and bare["load"] is None
    table = panel.markdown_table([row, bare]).splitlines()
    assert len(table) == 4
    assert all(line.count("|") == len(panel.COLUMNS) + 1 for line in table)
    cells = [c.strip() for c in table[2].strip("|").split("|")]
    assert cells[0] == "dimer" and cells[6] == "1.20" and cells[9] == "0.80" and cells[10] == "5.0"
    bare_cells = [c.strip() for c in table[3].strip("|").split("|")]
    assert bare_cells[7] == "—" and bare_cells[-1] == "—"
