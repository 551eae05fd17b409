"""``cryospin reconstruct``'s flags, made from RunConfig's declared settings (no list of its own)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from ..engine.config import RunConfig, run_settings
from ..engine.setting import Setting


def _typed(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """``parse`` as an argparse type: its ValueError becomes argparse's one-line usage error."""

    def typed(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from exc

    return typed


LISTED_CHOICES = 8
"""Settings with more choices than this show a name in the usage line instead of every choice."""


def _argument(s: Setting) -> dict[str, Any]:
    """``add_argument`` keywords for one declared setting (positional settings take only ``help``)."""
    if not s.flag.startswith("-"):
        return {"help": s.help}
    kw: dict[str, Any] = {"dest": s.name, "help": s.help}
    if s.required:
        kw["required"] = True
    else:
        kw["default"] = s.default
    if isinstance(s.default, bool):
        kw["action"] = "store_false" if s.default else "store_true"
    elif s.choices is not None:
        kw["choices"] = tuple(s.choices)
        if len(s.choices) > LISTED_CHOICES:  # a long list is named in the help, not in the usage line
            kw["metavar"] = s.name.upper()
    elif s.parse is not None:
        kw["type"] = _typed(s.parse)
    elif s.low is not None:
        kw["type"] = int
    return kw


def add_run_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per RunConfig setting declared with a CLI flag; those sharing a group exclude each other."""
    groups: dict[str, argparse._MutuallyExclusiveGroup] = {}
    for s in run_settings():
        if s.flag is None:
            continue
        if s.group is not None and s.group not in groups:
            groups[s.group] = parser.add_mutually_exclusive_group()
        target = parser if s.group is None else groups[s.group]
        target.add_argument(s.flag, **_argument(s))


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The RunConfig the arguments describe (it checks every value)."""
    return RunConfig(**{s.name: getattr(args, s.name) for s in run_settings() if s.flag is not None})
