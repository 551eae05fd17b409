"""Regenerate the bundled map (``src/napari_cryospin/resources``) from PDB entry 7DDO, with provenance.

The atomic model is ``Tests/PDB/7DDO.pdb`` of the Biopython 1.88 source distribution on PyPI (the PDB
entry itself is CC0); without ``--pdb`` it is fetched with ``pip download``. Run from the repository root.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np

from napari_cryospin.data.mrc import write_volume
from napari_cryospin.simulation import atomic

BIOPYTHON = "biopython==1.88"
MEMBER = "biopython-1.88/Tests/PDB/7DDO.pdb"
PDB_SHA256 = "d6f4f7bacd3a8c8d21c4ec9d2543d74887a38fe469fd9840f8b9275f4039dd50"
FILL = 0.6
BOXES = (64, 32)


def fetch_pdb(workdir: Path) -> Path:
    """Download Biopython's source distribution with pip and extract 7DDO.pdb from its tests."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-binary",
            ":all:",
            BIOPYTHON,
            "-d",
            workdir,
        ],
        check=True,
    )
    sdist = next(workdir.glob("biopython-*.tar.gz"))
    with tarfile.open(sdist) as tar:
        data = tar.extractfile(MEMBER).read()
    out = workdir / "7DDO.pdb"
    out.write_bytes(data)
    return out


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(argv: list[str] | None = None) -> int:
    """Build the box-64 and box-32 maps and ``provenance.json``."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pdb", type=Path, help="7DDO.pdb (default: fetch it from Biopython's sdist)")
    parser.add_argument("--out-dir", type=Path, default=Path("src/napari_cryospin/resources"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        pdb = args.pdb or fetch_pdb(Path(tmp))
        digest = sha256(pdb)
        if digest != PDB_SHA256:
            raise SystemExit(f"{pdb}: SHA-256 {digest} differs from the recorded input {PDB_SHA256}")
        atoms = atomic.read_atoms(pdb, use_gemmi=False)
    voxel64 = round(atomic.auto_voxel_size(atoms, BOXES[0], FILL), 2)
    outputs = {}
    for box in BOXES:
        voxel = voxel64 * BOXES[0] / box
        volume = atomic.atoms_to_map(atoms, box, voxel)
        path = args.out_dir / f"ace2_rbd_7ddo_box{box}.mrc"
        write_volume(path, volume, voxel)
        outputs[path.name] = {
            "box": box,
            "voxel_size_A": voxel,
            "lowpass_A": 2 * voxel,
            "sum": float(volume.sum(dtype=np.float64)),
            "sha256": sha256(path),
        }
    provenance = {
        "pdb_id": "7DDO",
        "title": "Cryo-EM structure of human ACE2 and GD/1/2019 RBD",
        "chains": {"A": "angiotensin-converting enzyme 2 (human)", "C": "spike protein S1 RBD"},
        "method": "electron microscopy",
        "citation": "Niu S. et al. (2021) EMBO J. 40:e107786, doi:10.15252/embj.2021107786",
        "pdb_license": "CC0 1.0 (wwPDB data policy)",
        "source": {
            "package": BIOPYTHON,
            "file": MEMBER,
            "how": "pip download --no-deps --no-binary :all: biopython==1.88",
            "sha256": PDB_SHA256,
        },
        "atoms": len(atoms.xyz),
        "atoms_note": "first model, waters removed; weight = atomic number x occupancy",
        "sum_of_weights": float(atoms.weights.sum()),
        "rendering": {
            "function": "napari_cryospin.simulation.atomic.atoms_to_map",
            "reader": "built-in PDB reader (gemmi not used)",
            "fill": FILL,
            "atom_sigma_A": 1.0,
            "oversampling": 2,
            "lowpass": "raised cosine from 0.8/res to 1/res, res = 2 x voxel size",
            "centering": "weighted centre of mass at index box//2",
        },
        "maps": outputs,
        "script": "tools/make_bundled_map.py",
    }
    (args.out_dir / "provenance.json").write_text(json.dumps(provenance, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
