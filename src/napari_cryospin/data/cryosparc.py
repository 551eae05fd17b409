"""cryoSPARC `.cs` particle files (numpy structured arrays) → `ParticleSet`.

Pose convention (recorded decision): cryoDRGN's `parse_pose_csparc` builds `expmap(pose)` and transposes
it to get the matrix its `parse_pose_star` builds from RELION angles, which is RELION's `A = Rᵀ`. Hence
`expmap(pose)` is our `R = Rz(rot)·Ry(tilt)·Rz(psi)`: `R = Rotation.from_rotvec(pose).as_matrix()`.
cryoDRGN also uses `alignments3D/shift` (pixels of the blob) as is, with the sign of RELION's origin; so
do we. Neither is checked here against data written by cryoSPARC itself.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

from .box_scale import rescale
from .checks import check_values
from .downsample import ParticleStack
from .errors import ParticleFileError
from .particle_set import CTFParams, ParticleSet
from .stack_paths import find_stacks


def _load(path: Path) -> np.ndarray:
    if not path.is_file():
        raise ParticleFileError(f"{path}: cryoSPARC file not found. Fix: check the path.")
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise ParticleFileError(
            f"{path.name}: not a cryoSPARC .cs file ({exc}). Fix: export particles from cryoSPARC."
        ) from exc
    if not isinstance(data, np.ndarray) or data.dtype.names is None:
        raise ParticleFileError(
            f"{path.name}: not a cryoSPARC .cs file (no named fields). Fix: export particles from cryoSPARC."
        )
    if len(data) == 0:
        raise ParticleFileError(f"{path.name}: holds no particles. Fix: choose a non-empty .cs file.")
    return data


_CTF_FIELDS = {
    "ctf/df1_A": "defocus_u",
    "ctf/df2_A": "defocus_v",
    "ctf/df_angle_rad": "defocus_angle",
    "ctf/accel_kv": "voltage",
    "ctf/cs_mm": "cs",
    "ctf/amp_contrast": "amplitude_contrast",
    "ctf/phase_shift_rad": "phase_shift",
    "ctf/bfactor": "bfactor",
    "blob/psize_A": "pixel_size",
}
"""cryoSPARC fields checked with the rules of ``checks.RULES`` (the value names the quantity)."""


def _field(path: Path, data: np.ndarray, name: str, default: float | np.ndarray | None) -> np.ndarray:
    """Field ``name`` as checked floats (a row per particle), or ``default`` when the file lacks it."""
    if name in data.dtype.names:
        values = np.asarray(data[name], dtype=float)
        quantity = _CTF_FIELDS.get(name, "number")
        flat = values.reshape(len(values), -1)
        for column in range(flat.shape[1]):
            label = name if flat.shape[1] == 1 else f"{name}[{column}]"
            check_values(path, flat[:, column], quantity, label)
        return values
    if default is None:
        raise ParticleFileError(
            f"{path.name}: missing field {name}. Fix: export the particles from a cryoSPARC job that "
            f"has it (for CTF fields: after CTF estimation)."
        )
    return np.broadcast_to(np.asarray(default, dtype=float), (len(data),)).copy()


def _stack_refs(path: Path, data: np.ndarray) -> tuple[list[Path], np.ndarray, np.ndarray]:
    for name in ("blob/path", "blob/idx"):
        if name not in data.dtype.names:
            raise ParticleFileError(
                f"{path.name}: missing field {name}, so the images cannot be found. Fix: use the "
                f"particles .cs of an extraction or refinement job."
            )
    raw = [p.decode() if isinstance(p, bytes) else str(p) for p in data["blob/path"]]
    names, file_index = np.unique([p.removeprefix(">") for p in raw], return_inverse=True)
    files = find_stacks([str(name) for name in names], path, [path.resolve().parent.parent])
    return files, file_index, np.asarray(data["blob/idx"], dtype=np.int64)


def _pixel_size(path: Path, data: np.ndarray, stack: ParticleStack) -> float:
    if "blob/psize_A" in data.dtype.names:
        sizes = _field(path, data, "blob/psize_A", None)
        if np.ptp(sizes) <= 1e-4 * sizes.max():
            return float(sizes[0])
        other = int(np.argmax(np.abs(sizes - sizes[0])))
        raise ParticleFileError(
            f"{path.name}: particles have different pixel sizes: {sizes[0]:g} and {sizes[other]:g} Å in "
            f"blob/psize_A, rows 1 and {other + 1}. Fix: re-extract (or downsample) all particles to one "
            f"pixel size and box in cryoSPARC, or open each group alone."
        )
    header = stack.stack(0).pixel_size
    if header is None:
        raise ParticleFileError(
            f"{path.name}: no blob/psize_A field and no pixel size in {stack.files[0].name}. Fix: "
            f"export the particles from cryoSPARC with their blob fields."
        )
    return header


def read_cs(path: str | os.PathLike, box: int | None = None) -> ParticleSet:
    """Read a cryoSPARC particle `.cs`; images are served at `box` pixels when given."""
    path = Path(path)
    data = _load(path)
    files, file_index, image_index = _stack_refs(path, data)
    stack = ParticleStack(files, file_index, image_index, box=box, source=path)
    original_pixel = _pixel_size(path, data, stack)
    df1 = _field(path, data, "ctf/df1_A", None)
    ctf = CTFParams(
        defocus_u=df1,
        defocus_v=_field(path, data, "ctf/df2_A", df1),
        defocus_angle=np.rad2deg(_field(path, data, "ctf/df_angle_rad", 0.0)),
        voltage=_field(path, data, "ctf/accel_kv", None),
        cs=_field(path, data, "ctf/cs_mm", None),
        amplitude_contrast=_field(path, data, "ctf/amp_contrast", None),
        phase_shift=np.rad2deg(_field(path, data, "ctf/phase_shift_rad", 0.0)),
        bfactor=_field(path, data, "ctf/bfactor", 0.0),
    )
    rotations = original_shifts = None
    if "alignments3D/pose" in data.dtype.names:
        rotations = Rotation.from_rotvec(_field(path, data, "alignments3D/pose", None)).as_matrix()
        original_shifts = np.zeros((len(data), 2))
        if "alignments3D/shift" in data.dtype.names:
            original_shifts = _field(path, data, "alignments3D/shift", None)
    pixel_size, shifts = rescale(original_pixel, original_shifts, stack.original_box, stack.box)
    return ParticleSet(
        path=path,
        stack=stack,
        pixel_size=pixel_size,
        ctf=ctf,
        rotations=rotations,
        shifts=shifts,
        table=None,
        optics=None,
    )
