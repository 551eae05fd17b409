"""RunConfig checks every setting when made; the CLI takes its defaults from it."""

import argparse
from dataclasses import dataclass, fields

import pytest

from napari_cryospin.cli import build_parser
from napari_cryospin.cli.run_flags import config_from_args
from napari_cryospin.engine.config import RunConfig, config_defaults, run_settings
from napari_cryospin.engine.setting import declared, setting


def _config(**kw) -> RunConfig:
    return RunConfig(particles="p.star", out="run", **kw)


@pytest.mark.parametrize(
    ("setting", "value", "option", "allowed"),
    [
        ("heads", 0, "--heads", "≥ 1"),
        ("heads", 2.5, "--heads", "≥ 1"),
        ("epochs", 0, "--epochs", "≥ 1"),
        ("epochs", -3, "--epochs", "≥ 1"),
        ("explore_epochs", -1, "--explore-epochs", "≥ 0"),
        ("batch_size", 0, "--batch-size", "≥ 1"),
        ("seed", -1, "--seed", "≥ 0"),
        ("max_particles", 0, "--max-particles", "≥ 1"),
        ("encoder_width", 0, "--encoder-width", "≥ 1"),
        ("eval_every", 0, "--eval-every", "≥ 1"),
        ("box", 17, "--box", "even number of pixels ≥ 16"),
        ("box", 8, "--box", "even number of pixels ≥ 16"),
        ("encoder_box", 7, "--encoder-box", "even number of pixels ≥ 8"),
        ("device", "foo", "--device", "auto, cuda, cuda:N, mps, cpu"),
        ("device", "cpu:1", "--device", "auto, cuda, cuda:N, mps, cpu"),
        ("switch", -1, "--switch", "epoch number ≥ 0, 'auto' or 'manual'"),
        ("switch", "later", "--switch", "epoch number ≥ 0, 'auto' or 'manual'"),
        ("half_maps", "yes", "--half-maps", "True or False"),
        ("snapshot_interval_s", -1.0, "snapshot_interval_s", "≥ 0"),
    ],
)
def test_every_bad_setting_is_one_line_naming_option_and_range(setting, value, option, allowed):
    with pytest.raises(ValueError) as err:
        _config(**{setting: value})
    message = str(err.value)
    assert message.startswith(f"{option} must be") and allowed in message and repr(value) in message
    assert "\n" not in message and "Fix:" in message


def test_resume_and_overwrite_exclude_each_other():
    with pytest.raises(ValueError, match="--resume and --overwrite exclude each other"):
        _config(resume=True, overwrite=True)


def test_good_settings_are_kept_as_given():
    cfg = _config(heads=1, epochs=1, explore_epochs=0, switch=0, box=16, device="cuda:1", max_particles=1)
    assert (cfg.heads, cfg.switch, cfg.box, cfg.device) == (1, 0, 16, "cuda:1")
    assert RunConfig.from_dict({**cfg.to_dict(), "from_a_newer_version": 1}) == cfg


def _reconstruct_actions() -> dict[str, argparse.Action]:
    parser = build_parser()._subparsers._group_actions[0].choices["reconstruct"]
    return {a.dest: a for a in parser._actions if a.dest not in ("help", "debug")}


def test_cli_defaults_are_runconfig_defaults():
    args = build_parser().parse_args(["reconstruct", "p.star", "--out", "run"])
    defaults = config_defaults()
    for s in run_settings():
        if s.flag is not None and not s.required:
            assert getattr(args, s.name) == defaults[s.name], s.name
    assert config_from_args(args) == RunConfig(particles="p.star", out="run")


def test_every_setting_is_declared_once_and_is_its_cli_flag():
    """Each RunConfig field declares itself; each declared flag is on the CLI with that help, no other."""
    declared = {f.name: f.metadata.get("setting") for f in fields(RunConfig)}
    assert None not in declared.values(), [name for name, s in declared.items() if s is None]
    actions = _reconstruct_actions()
    flagged = [s for s in run_settings() if s.flag is not None]
    assert sorted(actions) == sorted(s.name for s in flagged)  # no hand-added flag, none missing
    for s in flagged:
        action = actions[s.name]
        assert action.help == s.help, s.name
        assert action.option_strings == ([s.flag] if s.flag.startswith("-") else []), s.name
        assert action.choices == (None if s.choices is None else tuple(s.choices)), s.name
    internal = {s.name for s in run_settings() if s.flag is None}
    assert internal == {"snapshot_interval_s", "eval_every"}
    assert {s.name for s in run_settings() if s.dock is not None} >= {"particles", "out", "heads", "box"}


def test_a_field_without_a_declaration_is_refused():
    @dataclass
    class Grown:
        heads: int = setting(7, help="encoder heads", low=1)
        added: int = 3

    with pytest.raises(TypeError, match=r"Grown.added has no setting\(...\) declaration"):
        declared(Grown)


def test_cli_flags_keep_their_spellings_and_behaviour():
    args = build_parser().parse_args(
        ["reconstruct", "p.star", "--out", "o", "--no-half-maps", "--switch", "manual", "--resume"]
    )
    cfg = config_from_args(args)
    assert (cfg.half_maps, cfg.switch, cfg.resume, cfg.overwrite) == (False, None, True, False)
    assert (
        config_from_args(
            build_parser().parse_args(["reconstruct", "p", "--out", "o", "--switch", "3"])
        ).switch
        == 3
    )
    with pytest.raises(SystemExit):
        build_parser().parse_args(["reconstruct", "p.star", "--out", "o", "--resume", "--overwrite"])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["reconstruct", "p.star", "--out", "o", "--switch", "later"])


@pytest.mark.parametrize(("given", "group"), [("C5", "C5"), ("d7", "D7"), ("O", "O"), ("c1", "C1")])
def test_a_point_group_the_run_can_find_is_accepted(given, group):
    assert RunConfig(particles="p.star", out="run", symmetry=given).symmetry == group
    assert (
        config_from_args(
            build_parser().parse_args(["reconstruct", "p.star", "--out", "o", "--symmetry", group])
        ).symmetry
        == group
    )


@pytest.mark.parametrize("group", ["C0", "C13", "D40", "X2"])
def test_a_point_group_the_run_cannot_find_is_refused(group):
    """Only the groups detection can place in the map (n ≤ 12) are imposed; a bad name is one clear line."""
    with pytest.raises(ValueError, match=group):
        RunConfig(particles="p.star", out="run", symmetry=group)
