"""Rotation representations used by cryoSPIN, in torch and differentiable.

Matrices follow the project conventions: ``R`` maps image-frame coordinates into the volume frame, and
RELION's Euler angles give ``R = Rz(rot) · Ry(tilt) · Rz(psi)``. Written here rather than taken from
``roma`` because the stable exp map and the RELION Euler convention are a few lines each.
"""

from __future__ import annotations

import math

import torch

_SMALL_ANGLE = 1e-3


def sixd_to_matrix(six: torch.Tensor) -> torch.Tensor:
    """Map (..., 6) S2S2 vectors to rotations: columns v1, v3 × v1, v3 with v3 = v1 × v2 normalised."""
    v1 = torch.nn.functional.normalize(six[..., 0:3], dim=-1)
    v2 = torch.nn.functional.normalize(six[..., 3:6], dim=-1)
    v3 = torch.nn.functional.normalize(torch.linalg.cross(v1, v2, dim=-1), dim=-1)
    v2t = torch.linalg.cross(v3, v1, dim=-1)
    return torch.stack([v1, v2t, v3], dim=-1)


def skew(w: torch.Tensor) -> torch.Tensor:
    """Cross-product matrices [w]× of (..., 3) vectors."""
    zero = torch.zeros_like(w[..., 0])
    wx, wy, wz = w.unbind(-1)
    rows = [
        torch.stack([zero, -wz, wy], dim=-1),
        torch.stack([wz, zero, -wx], dim=-1),
        torch.stack([-wy, wx, zero], dim=-1),
    ]
    return torch.stack(rows, dim=-2)


def axis_angle_to_matrix(w: torch.Tensor) -> torch.Tensor:
    """Rodrigues' formula for (..., 3) axis-angle vectors, with Taylor terms near ω = 0.

    ``R = I + a·[ω]× + b·[ω]×²`` with ``a = sin θ / θ`` and ``b = (1 − cos θ) / θ²``; below a small angle
    both use their series so that the value and the gradient stay finite at exactly zero.
    """
    theta2 = (w * w).sum(-1)
    small = theta2 < _SMALL_ANGLE**2
    safe2 = torch.where(small, torch.ones_like(theta2), theta2)
    theta = safe2.sqrt()
    a = torch.where(small, 1 - theta2 / 6 + theta2 * theta2 / 120, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24 + theta2 * theta2 / 720, (1 - torch.cos(theta)) / safe2)
    k = skew(w)
    eye = torch.eye(3, dtype=w.dtype, device=w.device).expand(k.shape)
    return eye + a[..., None, None] * k + b[..., None, None] * (k @ k)


def matrix_to_axis_angle(r: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`axis_angle_to_matrix` (angle in [0, π]); used for reporting, not gradients."""
    cos = ((r.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2).clamp(-1, 1)
    theta = torch.acos(cos)
    vee = torch.stack(
        [r[..., 2, 1] - r[..., 1, 2], r[..., 0, 2] - r[..., 2, 0], r[..., 1, 0] - r[..., 0, 1]], -1
    )
    sin = torch.sin(theta)
    near_zero = theta < _SMALL_ANGLE
    near_pi = theta > math.pi - 1e-3
    scale = torch.where(near_zero, 0.5 + theta**2 / 12, theta / (2 * sin.clamp_min(1e-12)))
    w = vee * scale[..., None]
    if near_pi.any():
        sym = (r + r.transpose(-1, -2)) / 2 - cos[..., None, None] * torch.eye(3, dtype=r.dtype)
        col = sym.diagonal(dim1=-2, dim2=-1).argmax(-1)
        axis = torch.nn.functional.normalize(
            torch.gather(sym, -1, col[..., None, None].expand(*col.shape, 3, 1)).squeeze(-1), dim=-1
        )
        axis = torch.where((axis * vee).sum(-1, keepdim=True) < 0, -axis, axis)
        w = torch.where(near_pi[..., None], axis * theta[..., None], w)
    return w


def _rz(a: torch.Tensor) -> torch.Tensor:
    c, s = torch.cos(a), torch.sin(a)
    z, o = torch.zeros_like(a), torch.ones_like(a)
    return torch.stack(
        [torch.stack([c, -s, z], -1), torch.stack([s, c, z], -1), torch.stack([z, z, o], -1)], -2
    )


def _ry(a: torch.Tensor) -> torch.Tensor:
    c, s = torch.cos(a), torch.sin(a)
    z, o = torch.zeros_like(a), torch.ones_like(a)
    return torch.stack(
        [torch.stack([c, z, s], -1), torch.stack([z, o, z], -1), torch.stack([-s, z, c], -1)], -2
    )


def euler_to_matrix(rot: torch.Tensor, tilt: torch.Tensor, psi: torch.Tensor) -> torch.Tensor:
    """RELION Euler angles in degrees → R = Rz(rot)·Ry(tilt)·Rz(psi)."""
    d = math.pi / 180
    return _rz(rot * d) @ _ry(tilt * d) @ _rz(psi * d)


def matrix_to_euler(r: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`euler_to_matrix`: (..., 3) angles (rot, tilt, psi) in degrees."""
    tilt = torch.acos(r[..., 2, 2].clamp(-1, 1))
    gimbal = torch.sin(tilt) < 1e-6
    rot = torch.atan2(r[..., 1, 2], r[..., 0, 2])
    psi = torch.atan2(r[..., 2, 1], -r[..., 2, 0])
    # At tilt 0 or 180 only rot ± psi is defined: put it all in rot.
    up = r[..., 2, 2] > 0
    rot_g = torch.where(
        up, torch.atan2(r[..., 1, 0], r[..., 0, 0]), torch.atan2(-r[..., 1, 0], -r[..., 0, 0])
    )
    rot = torch.where(gimbal, rot_g, rot)
    psi = torch.where(gimbal, torch.zeros_like(psi), psi)
    return torch.stack([rot, tilt, psi], -1) * (180 / math.pi)


def geodesic_distance(r1: torch.Tensor, r2: torch.Tensor) -> torch.Tensor:
    """Angle (radians) of R1ᵀR2, batched; stable near 0 and π via atan2 of the sine and cosine parts."""
    m = r1.transpose(-1, -2) @ r2
    cos = (m.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2
    vee = torch.stack(
        [m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]], -1
    )
    sin = vee.norm(dim=-1) / 2
    return torch.atan2(sin, cos)


def random_rotations(
    n: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Uniformly distributed rotations (Haar measure) from normalised Gaussian quaternions."""
    q = torch.randn(n, 4, generator=generator, dtype=torch.float64)
    q = q / q.norm(dim=-1, keepdim=True)
    return quaternion_to_matrix(q).to(dtype)


def quaternion_to_matrix(q: torch.Tensor) -> torch.Tensor:
    """Unit quaternions (w, x, y, z) → rotation matrices."""
    w, x, y, z = q.unbind(-1)
    rows = [
        torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
        torch.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
        torch.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
    ]
    return torch.stack(rows, -2)
