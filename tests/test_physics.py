"""Fourier/Hartley helpers, CTF and central slices, and the forward model against a third-party simulator."""

import numpy as np
import pytest
import torch

from napari_cryospin.physics.ctf import ctf_2d, electron_wavelength
from napari_cryospin.physics.fourier import (
    fftn_centered,
    frequency_grid_2d,
    hartley_centered,
    ifftn_centered,
    ihartley_centered,
)
from napari_cryospin.physics.shifts import centering_phase
from napari_cryospin.physics.slicing import extract_slices, insert_slices


def test_centred_fft_and_hartley_invert():
    x = torch.randn(2, 16, 16, 16, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(ifftn_centered(fftn_centered(x, 3), 3).real, x, atol=1e-5)
    assert torch.allclose(ihartley_centered(hartley_centered(x, 3), 3), x, atol=1e-4)
    # zero frequency at index L // 2
    assert torch.isclose(fftn_centered(x[0], 3)[8, 8, 8].real, x[0].sum(), rtol=1e-4)


def test_wavelength_at_300kv():
    assert abs(float(electron_wavelength(torch.tensor(300.0))) - 0.019687) < 1e-5


def test_ctf_sign_and_astigmatism():
    s = torch.tensor([[0.0, 0.0], [0.05, 0.0], [0.0, 0.05]])
    one = torch.ones(1)
    h = ctf_2d(s, 20000 * one, 10000 * one, 0 * one, 300 * one, 2.7 * one, 0.1 * one)
    assert abs(float(h[0, 0]) + 0.1) < 1e-6  # H(0) = −w: dark protein
    assert not torch.isclose(h[0, 1], h[0, 2])  # U along x differs from V along y
    rotated = ctf_2d(s, 20000 * one, 10000 * one, 90 * one, 300 * one, 2.7 * one, 0.1 * one)
    assert torch.isclose(rotated[0, 2], h[0, 1], atol=1e-5)


def test_identity_slice_is_the_projection_along_z():
    vol = torch.randn(16, 16, 16, generator=torch.Generator().manual_seed(1))
    k = frequency_grid_2d(16).reshape(-1, 2)
    sl = extract_slices(fftn_centered(vol, 3), torch.eye(3)[None], k)[0].reshape(16, 16)
    proj = vol.sum(0)  # V[z, y, x] summed over z
    assert torch.allclose(ifftn_centered(sl, 2).real, proj, atol=1e-3)


def test_slice_is_differentiable_in_rotation_and_volume():
    vol = torch.randn(16, 16, 16, requires_grad=True)
    w = torch.tensor([[0.1, 0.2, 0.3]], requires_grad=True)
    from napari_cryospin.geometry.rotations import axis_angle_to_matrix

    k = frequency_grid_2d(16).reshape(-1, 2)
    extract_slices(vol, axis_angle_to_matrix(w), k).pow(2).sum().backward()
    assert vol.grad.abs().sum() > 0 and w.grad.abs().sum() > 0


def test_insert_is_adjoint_of_extract():
    g = torch.Generator().manual_seed(2)
    vol = torch.randn(12, 12, 12, generator=g)
    rot = torch.linalg.qr(torch.randn(3, 3, 3, generator=g))[0]
    rot = rot * torch.linalg.det(rot)[:, None, None]
    k = frequency_grid_2d(12).reshape(-1, 2) * 0.7
    vals = torch.randn(3, k.shape[0], generator=g)
    lhs = (extract_slices(vol, rot, k) * vals).sum()
    ins, _ = insert_slices(vals, torch.ones_like(vals), rot, k, 12)
    # grid_sample's align_corners maps index i exactly, so ⟨Sv, a⟩ = ⟨v, Sᵀa⟩ up to float error.
    assert torch.isclose(lhs, (vol * ins).sum(), rtol=1e-3)


def test_shift_phase_moves_the_image():
    img = torch.zeros(16, 16)
    img[8, 8] = 1.0
    k = frequency_grid_2d(16).reshape(-1, 2) / 16
    spec = fftn_centered(img, 2).reshape(-1)
    # A particle with origin s sits at centre − s; moving the centred one there is the conjugate phase.
    moved = ifftn_centered(
        (spec * centering_phase(k, torch.tensor([[2.0, -3.0]]))[0].conj()).reshape(16, 16), 2
    )
    row, col = np.unravel_index(int(moved.real.argmax()), (16, 16))
    assert (row, col) == (8 + 3, 8 - 2)


def test_forward_model_reproduces_third_party_clean_images(ribosome_dir):
    """Given the true map, poses, shifts and CTF, our images match ASPIRE's clean ones (corr ≥ 0.98)."""
    from napari_cryospin.data.mrc import open_stack, read_volume
    from napari_cryospin.data.particles import load_particles

    truth = ribosome_dir / "truth"
    particles = load_particles(truth / "particles_with_poses.star").subset(np.arange(256))
    clean = open_stack(truth / "clean_first256.mrcs")[np.arange(256)]
    volume, _ = read_volume(truth / "gt_volume.mrc")
    box = particles.box
    k = frequency_grid_2d(box).reshape(-1, 2)
    ctf = particles.ctf

    def t(a):
        return torch.as_tensor(a, dtype=torch.float32)

    h = ctf_2d(
        k / (box * particles.pixel_size),
        t(ctf.defocus_u),
        t(ctf.defocus_v),
        t(ctf.defocus_angle),
        t(ctf.voltage),
        t(ctf.cs),
        t(ctf.amplitude_contrast),
        t(ctf.phase_shift),
        t(ctf.bfactor),
    )
    sl = extract_slices(fftn_centered(t(volume), 3), t(particles.rotations), k)
    spec = sl * h * centering_phase(k / box, t(particles.shifts)).conj()
    images = ifftn_centered(spec.reshape(-1, box, box), 2).real.numpy()
    corr = [np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in zip(images, clean, strict=True)]
    assert np.median(corr) >= 0.98
    assert min(corr) > 0.95


@pytest.mark.parametrize("box", [16, 17])
def test_frequency_grid_centre(box):
    k = frequency_grid_2d(box)
    assert torch.equal(k[box // 2, box // 2], torch.zeros(2))
