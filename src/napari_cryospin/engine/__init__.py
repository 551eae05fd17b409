"""The cryoSPIN engine: stages, switch, events, checkpoints (GUI-free)."""
