"""Where the cryoSPIN docks go: tabbed together in napari's window, so that they fit a 1920×1080 screen.

Stacked, the four docks need about 2600 px of height; each one opened from the Plugins menu joins the
tab group of the cryoSPIN docks already in its dock area. napari remembers each dock's area itself; a dock
the user floats floats again where it was the next time it opens (remembered in ``layout_file()``).
"""

from __future__ import annotations

from pathlib import Path

from qtpy.QtCore import QEvent, QObject, QSettings, QSize, QStandardPaths, QTimer
from qtpy.QtWidgets import QDockWidget, QFrame, QMainWindow, QScrollArea, QWidget

TABBED = "cryospin_tabbed"
"""Attribute marking a widget whose dock joins the other cryoSPIN docks' tabs."""


def layout_file() -> Path:
    """Where each dock's floating (and where) is remembered: the user's config folder."""
    config = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.GenericConfigLocation)
    return Path(config) / "napari-cryospin" / "layout.ini"


def _store() -> QSettings:
    return QSettings(str(layout_file()), QSettings.Format.IniFormat)


class _Remembered(QObject):
    """Keeps in the layout file whether its dock floats, and where, whenever the user floats, moves or
    docks it."""

    def __init__(self, dock: QDockWidget) -> None:
        super().__init__(dock)
        self.dock, self.key = dock, type(dock.widget()).__name__
        self.closing = False  # napari docks every floating dock as its window closes: not the user's choice
        dock.dockLocationChanged.connect(self.save)
        dock.topLevelChanged.connect(self.save)
        dock.installEventFilter(self)
        dock.parent().installEventFilter(self)

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        kind = event.type()
        if watched is not self.dock:  # the window: only its closing matters (nothing of the dock is read)
            self.closing = self.closing or kind == QEvent.Type.Close
        elif kind in (QEvent.Type.Move, QEvent.Type.Resize) and self.dock.isFloating():
            self.save()
        return False

    def save(self, *_args) -> None:
        if self.closing:
            return
        store = _store()
        store.setValue(f"{self.key}/floating", self.dock.isFloating())
        if self.dock.isFloating():
            store.setValue(f"{self.key}/geometry", self.dock.saveGeometry())


def restore_floating(dock: QDockWidget) -> None:
    """Float ``dock`` where it was when the user last had it floating."""
    store, key = _store(), type(dock.widget()).__name__
    if store.value(f"{key}/floating", False, type=bool):
        dock.setFloating(True)
        geometry = store.value(f"{key}/geometry")
        if geometry is not None:
            dock.restoreGeometry(geometry)


class _TabOnFirstShow(QObject):
    """When its widget is first shown (docked by then): float it as remembered, or tab it with siblings."""

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if event.type() == QEvent.Type.Show:
            watched.removeEventFilter(self)
            QTimer.singleShot(0, self._place)  # after napari's own placing of the dock
        return False

    def _place(self) -> None:
        widget = self.parent()
        dock = widget.parent()
        if isinstance(dock, QDockWidget) and isinstance(dock.parent(), QMainWindow):
            restore_floating(dock)
            tab_with_siblings(widget)
            _Remembered(dock)


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
