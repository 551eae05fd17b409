"""RunConfig checks every setting when made; the CLI takes its defaults from it."""

import pytest

from napari_cryospin.cli import build_parser
from napari_cryospin.engine.config import RunConfig, config_defaults


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


def test_cli_defaults_are_runconfig_defaults():
    args = build_parser().parse_args(["reconstruct", "p.star", "--out", "run"])
    defaults = config_defaults()
    for name in ("heads", "epochs", "switch", "explore_epochs", "device", "box", "batch_size", "seed"):
        assert getattr(args, name) == defaults[name], name
    for name in ("encoder_box", "encoder_width", "max_particles", "resume", "overwrite"):
        assert getattr(args, name) == defaults[name], name
    assert args.no_half_maps is (not defaults["half_maps"])


@pytest.mark.parametrize("group", ["C5", "d7", "O"])
def test_a_point_group_is_refused_in_ab_initio_until_it_can_be_imposed_right(group):
    """Imposed from exploration's first maps a group gave a wrong C5 map whose halves agreed (measured)."""
    with pytest.raises(ValueError, match=r"symmetry .+: imposing a point group during ab initio is not"):
        RunConfig(particles="p.star", out="run", symmetry=group)
    assert RunConfig(particles="p.star", out="run", symmetry="c1").symmetry == "C1"
    with pytest.raises(ValueError, match="C0"):
        RunConfig(particles="p.star", out="run", symmetry="C0")
