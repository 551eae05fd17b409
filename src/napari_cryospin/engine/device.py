"""Pick the torch device: CUDA when present, else Apple MPS, else CPU, unless the user forces one."""

from __future__ import annotations


def available_devices() -> list[str]:
    """Devices this machine offers, best first (always ends with ``"cpu"``)."""
    import torch

    found = []
    if torch.cuda.is_available():
        found.append("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found.append("mps")
    found.append("cpu")
    return found


def resolve_device(name: str = "auto") -> str:
    """``"auto"`` → the best available device; a named device is checked, with a clear error if absent."""
    found = available_devices()
    if name == "auto":
        return found[0]
    base = name.split(":")[0]
    if base not in found:
        raise ValueError(
            f"device '{name}' is not available on this machine (found: {', '.join(found)}). "
            "Fix: choose one of those, or 'auto'."
        )
    return name
