"""Particle data: RELION STAR, cryoSPARC .cs and MRC stacks in, maps and poses out."""
