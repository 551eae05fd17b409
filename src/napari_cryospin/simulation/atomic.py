"""Atomic models (PDB / mmCIF) to density maps, so users can simulate from a structure they have.

Atoms are Gaussians weighted by atomic number × occupancy, rendered on a 2× finer grid and Fourier-cropped,
so the map is band-limited without aliasing. gemmi (the ``atomic`` extra) reads the file when installed;
a small built-in reader for PDB and mmCIF ``atom_site`` records is used otherwise.
"""

from __future__ import annotations

import gzip
import io
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ATOMIC_SUFFIXES = (".pdb", ".ent", ".cif", ".mmcif")

_ATOMIC_NUMBER = {
    "H": 1, "D": 1, "C": 6, "N": 7, "O": 8, "F": 9, "NA": 11, "MG": 12, "P": 15, "S": 16, "CL": 17,
    "K": 19, "CA": 20, "MN": 25, "FE": 26, "CO": 27, "NI": 28, "CU": 29, "ZN": 30, "SE": 34, "BR": 35,
    "I": 53,
}  # fmt: skip
_DEFAULT_Z = 6
_WATERS = frozenset({"HOH", "WAT", "DOD", "H2O"})
_CIF_TOKEN = re.compile(r"'[^']*'|\"[^\"]*\"|\S+")


@dataclass
class Atoms:
    """Atom positions (n, 3) in Å (x, y, z), atomic numbers (n,) and occupancies (n,)."""

    xyz: np.ndarray
    atomic_number: np.ndarray
    occupancy: np.ndarray

    @property
    def weights(self) -> np.ndarray:
        """Scattering weight of each atom: atomic number × occupancy."""
        return self.atomic_number * self.occupancy


def is_atomic_model(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a PDB or mmCIF file (optionally gzipped), judged by its suffix."""
    suffixes = [s.lower() for s in Path(path).suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    return bool(suffixes) and suffixes[-1] in ATOMIC_SUFFIXES


def _element_z(symbol: str) -> int:
    return _ATOMIC_NUMBER.get(symbol.strip().upper(), _DEFAULT_Z)


def _read_text(path: Path) -> str:
    if path.suffix.lower() == ".gz":
        with gzip.open(path, "rt", errors="replace") as fh:
            return fh.read()
    return path.read_text(errors="replace")


def _parse_pdb(text: str) -> tuple[list[list[float]], list[int], list[float]]:
    xyz, z, occ = [], [], []
    for line in io.StringIO(text):
        record = line[:6]
        if record.startswith("ENDMDL"):
            break
        if record not in ("ATOM  ", "HETATM") or line[17:20].strip() in _WATERS:
            continue
        symbol = line[76:78].strip() or line[12:14].strip().lstrip("0123456789")
        xyz.append([float(line[30:38]), float(line[38:46]), float(line[46:54])])
        z.append(_element_z(symbol))
        occ.append(float(line[54:60]) if line[54:60].strip() else 1.0)
    return xyz, z, occ


def _parse_cif(text: str) -> tuple[list[list[float]], list[int], list[float]]:
    lines = text.splitlines()
    for start, line in enumerate(lines):
        if line.strip() == "loop_" and start + 1 < len(lines) and lines[start + 1].startswith("_atom_site."):
            break
    else:
        return [], [], []
    names, row = [], start + 1
    while row < len(lines) and lines[row].startswith("_atom_site."):
        names.append(lines[row].split()[0][len("_atom_site.") :])
        row += 1
    tokens: list[str] = []
    for line in lines[row:]:
        if line.startswith(("loop_", "_", "#", "data_")):
            break
        tokens.extend(t.strip("'\"") for t in _CIF_TOKEN.findall(line))
    col = {name: i for i, name in enumerate(names)}
    width = len(names)
    model_col = col.get("pdbx_PDB_model_num")
    comp_col = col.get("label_comp_id", col.get("auth_comp_id"))
    occ_col = col.get("occupancy")
    xyz, z, occ = [], [], []
    first_model = None
    for i in range(0, len(tokens) - width + 1, width):
        rec = tokens[i : i + width]
        if model_col is not None:
            first_model = first_model or rec[model_col]
            if rec[model_col] != first_model:
                break
        if comp_col is not None and rec[comp_col] in _WATERS:
            continue
        xyz.append([float(rec[col["Cartn_x"]]), float(rec[col["Cartn_y"]]), float(rec[col["Cartn_z"]])])
        z.append(_element_z(rec[col["type_symbol"]]))
        occ.append(float(rec[occ_col]) if occ_col is not None and rec[occ_col] not in ("?", ".") else 1.0)
    return xyz, z, occ


def _read_with_gemmi(path: Path) -> tuple[list[list[float]], list[int], list[float]]:
    import gemmi

    structure = gemmi.read_structure(str(path))
    if len(structure) == 0:
        return [], [], []
    xyz, z, occ = [], [], []
    for chain in structure[0]:
        for residue in chain:
            if residue.name in _WATERS:
                continue
            for atom in residue:
                xyz.append([atom.pos.x, atom.pos.y, atom.pos.z])
                z.append(atom.element.atomic_number or _DEFAULT_Z)
                occ.append(atom.occ)
    return xyz, z, occ


def read_atoms(path: str | os.PathLike, use_gemmi: bool | None = None) -> Atoms:
    """Atoms of the first model of a PDB or mmCIF file (``.gz`` too), waters left out.

    ``use_gemmi=None`` uses gemmi when it is installed; the built-in reader covers standard files.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: atomic model not found. Fix: check the path.")
    if not is_atomic_model(path):
        raise ValueError(
            f"{path.name}: not a PDB or mmCIF file (suffix). Fix: use a .pdb, .ent, .cif or .mmcif file."
        )
    if use_gemmi is None:
        try:
            import gemmi  # noqa: F401

            use_gemmi = True
        except ImportError:
            use_gemmi = False
    if use_gemmi:
        xyz, z, occ = _read_with_gemmi(path)
    else:
        text = _read_text(path)
        cif = bool({".cif", ".mmcif"} & {s.lower() for s in path.suffixes})
        try:
            xyz, z, occ = _parse_cif(text) if cif else _parse_pdb(text)
        except (ValueError, KeyError, IndexError) as exc:
            raise ValueError(
                f"{path.name}: could not read its atom records ({exc}). Fix: install gemmi "
                f"(pip install 'napari-cryospin[atomic]') or convert the file to standard PDB/mmCIF."
            ) from exc
    if not xyz:
        raise ValueError(
            f"{path.name}: no atoms found. Fix: choose a file with ATOM/HETATM or atom_site records."
        )
    return Atoms(
        xyz=np.asarray(xyz, dtype=np.float64),
        atomic_number=np.asarray(z, dtype=np.float64),
        occupancy=np.asarray(occ, dtype=np.float64),
    )


def auto_voxel_size(atoms: Atoms, box: int, fill: float = 0.6) -> float:
    """Voxel size (Å) at which the molecule's diameter about its centre of mass spans ``fill`` of the box."""
    centre = np.average(atoms.xyz, axis=0, weights=atoms.weights)
    radius = float(np.linalg.norm(atoms.xyz - centre, axis=1).max())
    return 2 * radius / (fill * box)


def _splat(xyz_vox: np.ndarray, weights: np.ndarray, box: int, sigma_vox: float) -> np.ndarray:
    """Sum of Gaussians (σ in voxels), each summing to its weight, at voxel coordinates (x, y, z)."""
    reach = math.ceil(3 * sigma_vox)
    off = np.arange(-reach, reach + 1)
    oz, oy, ox = (a.ravel() for a in np.meshgrid(off, off, off, indexing="ij"))
    grid = np.zeros(box**3, dtype=np.float64)
    chunk = max(1, 4_000_000 // oz.size)
    for s in range(0, len(xyz_vox), chunk):
        p, w = xyz_vox[s : s + chunk], weights[s : s + chunk]
        base = np.round(p).astype(np.int64)
        ix = base[:, 0:1] + ox
        iy = base[:, 1:2] + oy
        iz = base[:, 2:3] + oz
        d2 = (ix - p[:, 0:1]) ** 2 + (iy - p[:, 1:2]) ** 2 + (iz - p[:, 2:3]) ** 2
        kernel = np.exp(-0.5 * d2 / sigma_vox**2)
        val = kernel * (w / kernel.sum(axis=1))[:, None]
        ok = (ix >= 0) & (ix < box) & (iy >= 0) & (iy < box) & (iz >= 0) & (iz < box)
        flat = (iz * box + iy) * box + ix
        grid += np.bincount(flat[ok], weights=val[ok], minlength=box**3)
    return grid.reshape(box, box, box)


def atoms_to_map(
    atoms: Atoms,
    box: int,
    voxel_size: float,
    *,
    resolution: float | None = None,
    atom_sigma: float = 1.0,
    center: bool = True,
) -> np.ndarray:
    """Density ``V[z, y, x]`` (float32, units of atomic number per voxel) of ``atoms`` on a box³ grid.

    The model is centred on its weighted centre of mass when ``center``; the map is low-passed with a
    raised-cosine edge ending at ``resolution`` Å (default 2 × voxel size, i.e. Nyquist).
    """
    if box % 2:
        raise ValueError(f"box must be even, got {box}. Fix: choose an even box size.")
    resolution = 2 * voxel_size if resolution is None else resolution
    fine_box, fine_voxel = 2 * box, voxel_size / 2
    xyz = atoms.xyz
    if center:
        xyz = xyz - np.average(xyz, axis=0, weights=atoms.weights)
    xyz_vox = xyz / fine_voxel + fine_box // 2
    sigma_vox = max(atom_sigma / fine_voxel, 0.75)
    fine = _splat(xyz_vox, atoms.weights, fine_box, sigma_vox)
    spectrum = np.fft.fftshift(np.fft.fftn(np.fft.ifftshift(fine)))
    lo = fine_box // 2 - box // 2
    spectrum = spectrum[lo : lo + box, lo : lo + box, lo : lo + box]
    k = (np.arange(box) - box // 2) / (box * voxel_size)
    s = np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2)
    cutoff = 1.0 / resolution
    edge = np.clip((s - 0.8 * cutoff) / (0.2 * cutoff), 0.0, 1.0)
    spectrum *= 0.5 * (1 + np.cos(math.pi * edge))
    volume = np.fft.fftshift(np.fft.ifftn(np.fft.ifftshift(spectrum))).real
    return volume.astype(np.float32)


def model_to_map(
    path: str | os.PathLike,
    box: int,
    voxel_size: float | None = None,
    *,
    resolution: float | None = None,
    fill: float = 0.6,
    use_gemmi: bool | None = None,
) -> tuple[np.ndarray, float]:
    """Read a PDB/mmCIF file and render it: returns (map, voxel size in Å).

    Without ``voxel_size`` the molecule's diameter spans ``fill`` of the box (see :func:`auto_voxel_size`).
    """
    atoms = read_atoms(path, use_gemmi=use_gemmi)
    voxel = auto_voxel_size(atoms, box, fill) if voxel_size is None else float(voxel_size)
    return atoms_to_map(atoms, box, voxel, resolution=resolution), voxel
