"""Learnable parts of cryoSPIN: multi-head encoder, Hartley volume, per-particle poses."""
