"""Sky geometry for the posterior map: turning view directions into (longitude, latitude) of a rotated sky."""

from __future__ import annotations

import healpy
import numpy as np


def sky_rotation(lon_deg: float, lat_deg: float) -> np.ndarray:
    """Rotation that brings the direction at (lon, lat) degrees to the map centre (0, 0)."""
    lon, lat = np.radians(lon_deg), np.radians(lat_deg)
    rz = np.array([[np.cos(lon), np.sin(lon), 0.0], [-np.sin(lon), np.cos(lon), 0.0], [0.0, 0.0, 1.0]])
    ry = np.array([[np.cos(lat), 0.0, np.sin(lat)], [0.0, 1.0, 0.0], [-np.sin(lat), 0.0, np.cos(lat)]])
    return ry @ rz


def lonlat(vectors: np.ndarray, rotation: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Longitude and latitude (radians) of direction vectors (..., 3) on the sky rotated by `rotation`."""
    v = np.asarray(vectors, dtype=np.float64) @ rotation.T
    v = v / np.linalg.norm(v, axis=-1, keepdims=True)
    return np.arctan2(v[..., 1], v[..., 0]), np.arcsin(np.clip(v[..., 2], -1.0, 1.0))


def direction_lonlat_deg(vector: np.ndarray) -> tuple[float, float]:
    """(lon, lat) in degrees of one direction on the unrotated sky."""
    lon, lat = lonlat(vector, np.eye(3))
    return float(np.degrees(lon)), float(np.degrees(lat))


def sky_raster(
    log_posterior: np.ndarray, rotation: np.ndarray, width: int = 240
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cell edges in longitude and latitude (radians) and the HEALPix values sampled on that grid."""
    nside = healpy.npix2nside(len(log_posterior))
    lon_edges = np.linspace(-np.pi, np.pi, width + 1)
    lat_edges = np.linspace(-np.pi / 2, np.pi / 2, width // 2 + 1)
    lon = 0.5 * (lon_edges[1:] + lon_edges[:-1])
    lat = 0.5 * (lat_edges[1:] + lat_edges[:-1])
    lon_grid, lat_grid = np.meshgrid(lon, lat)
    shown = np.stack(
        [np.cos(lat_grid) * np.cos(lon_grid), np.cos(lat_grid) * np.sin(lon_grid), np.sin(lat_grid)], axis=-1
    )
    original = shown @ rotation  # inverse rotation: v = Rᵀ u, written for row vectors
    pixels = healpy.vec2pix(nside, original[..., 0], original[..., 1], original[..., 2])
    return lon_edges, lat_edges, np.asarray(log_posterior)[pixels]


def split_at_wraps(lon: np.ndarray, lat: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Pieces of a path that do not jump across the map's ±180° edge."""
    if len(lon) == 0:
        return []
    breaks = np.flatnonzero(np.abs(np.diff(lon)) > np.pi) + 1
    return list(zip(np.split(lon, breaks), np.split(lat, breaks), strict=True))


def tangent_basis(centre: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(c, east, north): the unit centre and two unit vectors spanning the sky's tangent plane there."""
    c = np.asarray(centre, dtype=np.float64)
    c = c / np.linalg.norm(c)
    helper = np.array([1.0, 0.0, 0.0]) if abs(c[2]) > 0.999 else np.array([0.0, 0.0, 1.0])
    east = np.cross(helper, c)
    east /= np.linalg.norm(east)
    return c, east, np.cross(c, east)


def gnomonic_xy(vectors: np.ndarray, centre: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gnomonic coordinates (degrees of tangent-plane distance) of directions (..., 3) around `centre`;
    NaN for directions in the other hemisphere."""
    c, east, north = tangent_basis(centre)
    v = np.asarray(vectors, dtype=np.float64)
    depth = v @ c
    with np.errstate(divide="ignore", invalid="ignore"):
        x, y = np.degrees((v @ east) / depth), np.degrees((v @ north) / depth)
    hidden = depth <= 1e-6
    return np.where(hidden, np.nan, x), np.where(hidden, np.nan, y)


def gnomonic_raster(
    coarse: np.ndarray,
    fine_nside: int,
    fine_pixels: np.ndarray,
    fine_values: np.ndarray,
    centre: np.ndarray,
    half_width_deg: float = 10.0,
    size: int = 120,
) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """Image (size, size) of the posterior around `centre` and its extent (x0, x1, y0, y1) in degrees:
    fine pixels where they were sampled, the coarse HEALPix map elsewhere."""
    c, east, north = tangent_basis(centre)
    edge = np.tan(np.radians(half_width_deg))
    t = np.linspace(-edge, edge, size)
    xx, yy = np.meshgrid(t, t)
    v = c + xx[..., None] * east + yy[..., None] * north
    v /= np.linalg.norm(v, axis=-1, keepdims=True)
    image = np.asarray(coarse)[
        healpy.vec2pix(healpy.npix2nside(len(coarse)), v[..., 0], v[..., 1], v[..., 2])
    ]
    fine = np.full(healpy.nside2npix(fine_nside), np.nan)
    fine[np.asarray(fine_pixels)] = fine_values
    sampled = fine[healpy.vec2pix(fine_nside, v[..., 0], v[..., 1], v[..., 2])]
    image = np.where(np.isfinite(sampled), sampled, image)
    shown = float(np.degrees(edge))
    return image, (-shown, shown, -shown, shown)
