"""bench/compare.py: a method's run continued where it stopped keeps its maps and counts its clock on."""

import json
import sys

import pytest

from bench_scripts import import_bench


@pytest.fixture(scope="module")
def compare():
    return import_bench("compare")


def test_a_continued_run_keeps_its_maps_and_counts_on_from_its_wall_time(compare, tmp_path):
    workdir = tmp_path / "relion"
    watch = workdir / "out"
    watch.mkdir(parents=True)
    (watch / "run_it010_class001.mrc").write_bytes(b"old")  # the first segment's map, copied then
    (workdir / "snapshots").mkdir()
    (workdir / "snapshots" / "000_00000100.0s_run_it010_class001.mrc").write_bytes(b"old")
    previous = compare.RunRecord(
        "relion", ["first"], 600.0, wall_s=300.0, cpu_s=250.0, peak_rss_mb=90.0, returncode=1,
        snapshots=[(100.0, str(workdir / "snapshots" / "000_00000100.0s_run_it010_class001.mrc"))],
    )  # fmt: skip
    new_map = f"pathlib.Path({str(watch)!r}, 'run_class001.mrc').write_bytes(b'new')"
    command = [sys.executable, "-c", f"import time, pathlib; time.sleep(1.5); {new_map}"]
    compare.run_all([("relion", command, workdir, previous)], 600.0, 1, concurrent=False)
    record = compare.RunRecord(**json.loads((workdir / "run.json").read_text()))
    times = [t for t, _ in record.snapshots]
    names = [p.rsplit("_", 1)[-1] for _, p in record.snapshots]
    assert len(record.snapshots) == 2 and names == ["class001.mrc", "class001.mrc"]
    assert times[0] == 100.0 and 300.0 < times[1] < 330.0  # the new map on the continued clock
    assert record.snapshots[1][1].endswith("_run_class001.mrc")
    assert record.continued_at_s == [300.0] and 300.0 < record.wall_s < 330.0
    assert record.cpu_s >= 250.0 and record.peak_rss_mb >= 90.0 and record.returncode == 0
