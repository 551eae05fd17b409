"""Simulated particle stacks: projection, CTF, noise, realistic nuisances, maps from atomic models."""
