"""`cryospin reconstruct`'s progress: a line for each final step the engine logs, under the bar; `--help`
states the demo's measured time."""

import io
import re
from types import SimpleNamespace

from napari_cryospin.cli.reconstruct import consume
from napari_cryospin.engine import doubtful_poses, outputs
from napari_cryospin.engine.events import Snapshot, Stage


class _FinishingEngine:
    """Two reports, then the final steps (logged as ``write_results`` and the search log them), the end."""

    dp = SimpleNamespace(main=True)

    def __init__(self, out) -> None:
        self.out = out

    def run(self):
        yield Snapshot(0, 1, Stage.ENCODING, 0.5, 1.0, 100.0, 0.5, 2.0, message="half way")
        yield Snapshot(1, 2, Stage.DECODING, 1.0, 2.0, 100.0, 0.4, 2.0, message="all epochs run")
        outputs.log.info("writing full-size maps…")
        searching = "searching %d particles in doubt over every rotation (pass %d of %d)…"
        doubtful_poses.log.info(searching, 12, 1, 2)
        outputs.log.info("writing metrics.json and plots…")
        yield Snapshot(1, 2, Stage.DONE, 1.0, 3.0, 0.0, 0.4, 2.0, message="done: 9.0 Å")


def test_each_final_step_is_a_line(tmp_path):
    stream = io.StringIO()
    assert consume(_FinishingEngine(tmp_path), stream=stream) == "done: 9.0 Å"
    lines = stream.getvalue().replace("\r", "\n").splitlines()
    assert "writing full-size maps…" in lines and "writing metrics.json and plots…" in lines
    assert "searching 12 particles in doubt over every rotation (pass 1 of 2)…" in lines
    assert not outputs.log.handlers and not doubtful_poses.log.handlers  # the printer goes with the run


def test_help_states_the_demos_measured_time():
    from napari_cryospin.cli import build_parser

    text = " ".join(build_parser().format_help().split())
    assert "a few minutes" not in text
    assert re.search(r"demo .*\(\d+ min measured on \d+ CPU cores.*load ~\d", text), text
