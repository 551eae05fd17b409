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
