"""How a run setting is declared once (help, CLI flag, range or choices, dock row) on its dataclass field.

The CLI (``cli/run_flags.py``) and the dock (``_napari/_inputs.py``) are generated from these
declarations, and ``RunConfig.validate`` checks ranges and choices from them. GUI-free and torch-free.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import MISSING, dataclass
from typing import Any

DOCK_SECTIONS = ("main", "advanced")
"""Where the dock shows a setting: the form itself, or its collapsed "Advanced" part."""


@dataclass(frozen=True)
class Setting:
    """One setting's declaration; :func:`declared` fills in ``name``, ``flag``, ``default``, ``required``.

    ``flag``: the CLI spelling (``""``: ``--field-name``; None: not on the CLI; no dashes: positional).
    ``low``: the smallest value (ints); ``even``: a box in pixels; ``most``: the dock spin box's maximum
    (the CLI accepts more). ``choices`` maps each value to its label in the dock. ``parse`` turns the
    CLI's text into the value (ValueError for bad text). ``group``: CLI flags sharing it exclude each
    other. ``dock``: the dock section showing it, or None; ``label``: its row there (``""``: the name
    spaced); ``widget``: a dock widget other than the one the type implies (file, folder, switch, device).
    """

    help: str
    flag: str | None = ""
    low: int | None = None
    even: bool = False
    most: int | None = None
    choices: dict[str, str] | None = None
    parse: Callable[[str], Any] | None = None
    group: str | None = None
    dock: str | None = None
    label: str = ""
    widget: str = ""
    name: str = ""
    default: Any = None
    required: bool = False


def setting(default: Any = MISSING, **declaration: Any) -> Any:
    """A dataclass field with ``default`` whose metadata declares the setting (see :class:`Setting`)."""
    declared_setting = Setting(**declaration)
    if declared_setting.dock not in (None, *DOCK_SECTIONS):
        raise ValueError(f"dock section {declared_setting.dock!r} is not one of {DOCK_SECTIONS}")
    return dataclasses.field(default=default, metadata={"setting": declared_setting})


def labelled(values: tuple[str, ...], labels: tuple[str, ...]) -> dict[str, str]:
    """``choices`` for :func:`setting`: each value with its dock label (one label per value)."""
    return dict(zip(values, labels, strict=True))


def described(text: str, default: Any) -> str:
    """``text`` with argparse's ``%(default)s`` filled in, as the dock's tooltips show it."""
    return text.replace("%(default)s", str(default))


def declared(cls: type) -> list[Setting]:
    """Every field's declaration, with its name, CLI flag and default; TypeError names an undeclared one."""
    out = []
    for f in dataclasses.fields(cls):
        if "setting" not in f.metadata:
            raise TypeError(f"{cls.__name__}.{f.name} has no setting(...) declaration (help, flag, dock)")
        s = f.metadata["setting"]
        flag = "--" + f.name.replace("_", "-") if s.flag == "" else s.flag
        missing = f.default is MISSING
        default = None if missing else f.default
        out.append(dataclasses.replace(s, name=f.name, flag=flag, default=default, required=missing))
    return out
