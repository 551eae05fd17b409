"""The map a biologist publishes, from the two full-size half maps: mask, mask-corrected FSC, sharpening,
local resolution (numpy and scipy only; ``pipeline.py`` runs them in order)."""
