"""The end of a run in the reconstruction dock: its verdict as a list that wraps in the dock, and a
notification short enough for napari's one-line pop-up (which elides a long one)."""

from __future__ import annotations

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QGroupBox, QLabel, QVBoxLayout

from ..engine.events import Snapshot


def _split_top_level(text: str, separator: str = "; ", keep: int = 0) -> list[str]:
    """``text`` cut at each ``separator`` outside parentheses, its first ``keep`` characters kept."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += (char == "(") - (char == ")")
        if depth == 0 and text.startswith(separator, i):
            parts.append(text[start : i + keep])
            start = i + len(separator)
    parts.append(text[start:])
    return [part.strip() for part in parts if part.strip()]


def _opening_of_last(text: str) -> int:
    """Where the parenthesis closed by ``text``'s last character opens (-1: it ends otherwise)."""
    depth = 0
    for i in range(len(text) - 1, -1, -1):
        depth += (text[i] == ")") - (text[i] == "(")
        if depth == 0:
            return i if text.endswith(")") else -1
    return -1


def verdict_lines(message: str) -> list[str]:
    """The engine's final line as one bullet per clause (a parenthesis followed by a comma ends one too);
    a clause ending in a parenthesis of several reasons lists them below it."""
    clauses = [part for clause in _split_top_level(message) for part in _split_top_level(clause, "), ", 1)]
    lines = []
    for clause in clauses:
        opening = _opening_of_last(clause)
        reasons = _split_top_level(clause[opening + 1 : -1]) if opening > 0 else []
        if len(reasons) > 1:
            lines.append(f"• {clause[:opening].rstrip()}:")
            lines.extend(f"    – {reason}" for reason in reasons)
        else:
            lines.append(f"• {clause}")
    return lines


def short_verdict(snapshot: Snapshot) -> str:
    """The run's end in a few words for the notification: resolution and whether the map is reliable (an
    unreliable run's number is no resolution, so the notification names none)."""
    message = snapshot.message or "finished"
    if not message.startswith("done"):
        return f"cryoSPIN: {_split_top_level(message)[0]}"
    if "WARNING" in message:  # its number is the halves' agreement, said with its caveat in the dock
        return "cryoSPIN: map NOT reliable (see dock)"
    resolution = f"{snapshot.resolution:.1f} Å, " if snapshot.resolution else ""
    return f"cryoSPIN: {resolution}map reliable"


class VerdictPanel(QGroupBox):
    """The last run's verdict, one clause per line, wrapped to the dock's width; hidden until a run ends."""

    def __init__(self) -> None:
        super().__init__("Verdict of the run")
        self.label = QLabel()
        self.label.setWordWrap(True)
        self.label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        QVBoxLayout(self).addWidget(self.label)
        self.hide()

    def show_message(self, message: str) -> None:
        """Show the engine's final ``message`` as a list (nothing: hide the panel)."""
        self.label.setText("\n".join(verdict_lines(message)))
        self.setVisible(bool(message))
