"""Where the cryoSPIN docks go: tabbed together in napari's window, so that they fit a 1920×1080 screen.

Stacked, the four docks need about 2600 px of height; each one opened from the Plugins menu joins the
tab group of the cryoSPIN docks already in its dock area. A dock the user drags elsewhere stays there.
"""

from __future__ import annotations

from qtpy.QtCore import QEvent, QObject, QSize, QTimer
from qtpy.QtWidgets import QDockWidget, QFrame, QMainWindow, QScrollArea, QWidget

TABBED = "cryospin_tabbed"
"""Attribute marking a widget whose dock joins the other cryoSPIN docks' tabs."""


class _TabOnFirstShow(QObject):
    """Tabs its widget's dock with its siblings when the widget is first shown (it is docked by then)."""

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if event.type() == QEvent.Type.Show:
            watched.removeEventFilter(self)
            QTimer.singleShot(0, self._tab)  # after napari's own placing of the dock
        return False

    def _tab(self) -> None:
        tab_with_siblings(self.parent())


def dock_in_tabs(widget: QWidget) -> None:
    """Make ``widget``'s napari dock join the cryoSPIN docks' tab group once it is shown."""
    setattr(widget, TABBED, True)
    widget.installEventFilter(_TabOnFirstShow(widget))


def tab_with_siblings(widget: QWidget) -> None:
    """Put every cryoSPIN dock of ``widget``'s dock area in one tab group; ``widget``'s in front."""
    dock = widget.parent()
    window = dock.parent() if isinstance(dock, QDockWidget) else None
    if not isinstance(window, QMainWindow) or dock.isFloating():
        return
    area = window.dockWidgetArea(dock)
    group = [
        other
        for other in window.findChildren(QDockWidget)
        if getattr(other.widget(), TABBED, False)
        and not other.isFloating()
        and window.dockWidgetArea(other) == area
    ]
    first = group[0]
    for other in group[1:]:
        if other not in window.tabifiedDockWidgets(first):
            window.tabifyDockWidget(first, other)
    dock.show()
    dock.raise_()
    screen = window.screen().availableGeometry() if window.screen() is not None else None
    if screen is not None and window.height() > screen.height() and not window.isMaximized():
        window.resize(window.width(), screen.height())  # stacked for a moment, the docks had grown it


class _VerticalScroll(QScrollArea):
    """A scroll area that asks for its content's minimum width (a horizontal bar only when the dock
    area is narrower still, e.g. a hidden tab's width not yet updated)."""

    def minimumSizeHint(self) -> QSize:
        hint = super().minimumSizeHint()
        if self.widget() is not None:
            width = self.widget().minimumSizeHint().width() + self.verticalScrollBar().sizeHint().width()
            hint.setWidth(max(hint.width(), width))
        return hint

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if watched is self.widget() and event.type() == QEvent.Type.LayoutRequest:
            self.updateGeometry()  # the content's minimum width may have changed
        return super().eventFilter(watched, event)


def scrolled(content: QWidget) -> QScrollArea:
    """``content`` in a frameless scroll area: a dock shorter than the content scrolls, not clips; it asks
    to be as wide as the content needs, whatever it holds later (a long layer name, a device)."""
    area = _VerticalScroll()
    area.setWidget(content)
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.Shape.NoFrame)
    return area
