"""SO(3) geometry: rotation representations and conversions (torch, differentiable)."""
