"""The working box: large particle images are Fourier-cropped on the fly to a box the search can afford.

Ab-initio pose search needs low and medium frequencies only, and its cost grows with the box (a 256-px
stack costs ~16× a 64-px one per image, and the rotation grid does not get coarser). So unless ``--box``
is given, a stack larger than :data:`WORKING_BOX` for the device is served at that box (Fourier crop,
one batch at a time: the stack is never copied), and the final maps are reconstructed again at the
original box and pixel size from the poses found (``engine/full_size.py``).
"""

from __future__ import annotations

WORKING_BOX = {"cpu": 64, "gpu": 128}
"""Largest working box chosen automatically, per kind of device (pixels)."""


def working_box(original_box: int, requested: int | None, device_type: str) -> int:
    """The box the engine works at: ``requested`` when given, else the stack's box capped per device.

    ``device_type`` is a torch device type (``cpu``, ``cuda``, ``mps``); any accelerator gets the GPU cap.
    """
    if requested is not None:
        return requested
    cap = WORKING_BOX["cpu" if device_type == "cpu" else "gpu"]
    return min(original_box, cap)
