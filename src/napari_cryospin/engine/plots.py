"""Run plots for the output folder: FSC curve, and loss and resolution against wall time (Agg backend)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data.safe_write import save_figure


def plot_run(out: Path, history: list[dict], curves: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    """Write ``fsc.png`` (every final FSC: label → (frequency 1/Å, FSC)) and ``progress.png`` into ``out``
    (atomically)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 3.5), dpi=110)
    ax = fig.add_subplot()
    for label, (freq, curve) in curves.items():
        ax.plot(freq, curve, label=label, lw=1.2)
    for thr in (0.5, 0.143):
        ax.axhline(thr, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("spatial frequency (1/Å)")
    ax.set_ylabel("half-map FSC")
    ax.set_ylim(-0.1, 1.05)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, Path(out) / "fsc.png")

    fig = Figure(figsize=(9, 3.5), dpi=110)
    ax1, ax2 = fig.subplots(1, 2)
    t = [h["wall_s"] / 60 for h in history]
    colors = ["tab:orange" if h["stage"] == "auto-encoding" else "tab:blue" for h in history]
    ax1.plot(t, [h["loss"] for h in history], color="grey", lw=0.8)
    ax1.scatter(t, [h["loss"] for h in history], c=colors, s=14)
    ax1.set_xlabel("wall time (min)")
    ax1.set_ylabel("loss")
    ax2.plot(t, [h["resolution"] for h in history], color="grey", lw=0.8)
    ax2.scatter(t, [h["resolution"] for h in history], c=colors, s=14)
    ax2.set_xlabel("wall time (min)")
    ax2.set_ylabel("resolution (Å, FSC 0.143)")
    ax2.invert_yaxis()
    fig.suptitle("orange: auto-encoding · blue: auto-decoding", fontsize=9)
    fig.tight_layout()
    save_figure(fig, Path(out) / "progress.png")
