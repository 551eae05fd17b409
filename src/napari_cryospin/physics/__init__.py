"""Image-formation physics: Fourier/Hartley transforms, CTF, shifts, central slices."""
