"""How time and memory grow with the particle count N, the box and the number of processes.

For each case a fresh process (or ``torchrun --nproc-per-node P`` of them, 1 thread each) builds the engine
on a memory-mapped stack, times a bounded number of batches of each stage — exploration (the grid search
at the last exploration epoch's grid and radius), auto-encoding, auto-decoding, a global re-search round's
batches (mates, then the wide grid search against a fixed map), the final mate check, the final local
refinement's widest round at the working box (its search against a fixed map), the dense search of the
particles in doubt (against a fixed map, its slice table made once) and backprojection —
reads the whole stack once (each process its block, as the final maps do) and reports its peak RSS. Time per
epoch is EXTRAPOLATED from the measured rate (N / img/s), labelled so in the table; the full read pass is
measured. Stacks of N particles are written in chunks into a memory-mapped .mrcs by tiling a simulated set
of ``--base`` particles (the timing does not depend on the poses), so no N × box² array is ever in RAM.

Usage: ``python bench/scale.py --n 10000 50000 200000 --boxes 64 128 256 --procs 2 [--work DIR]``; every
result is appended to ``WORK/results.jsonl`` and ``--table`` prints them all.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def _load() -> str:
    return "load " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


# --------------------------------------------------------------------------------------------- stacks
def make_stack(work: Path, n: int, box: int, base: int) -> Path:
    """``work/n{n}_box{box}/particles.star`` over a memory-mapped stack of ``n`` images (tiled, in chunks)."""
    import mrcfile
    import starfile

    from napari_cryospin.data.mrc import read_volume
    from napari_cryospin.resources import bundled_map_path
    from napari_cryospin.simulation.simulate import simulate_to_dir

    seed_dir = work / f"base{base}_box{box}"
    if not (seed_dir / "particles.star").exists():
        volume, voxel = read_volume(bundled_map_path(64))
        simulate_to_dir(volume, voxel, base, seed_dir, box=box, snr=0.1, max_shift_px=2.0, seed=1)
    folder = work / f"n{n}_box{box}"
    star = folder / "particles.star"
    if star.exists():
        return star
    folder.mkdir(parents=True, exist_ok=True)
    tables = starfile.read(seed_dir / "particles.star")
    with mrcfile.mmap(seed_dir / "particles.mrcs", mode="r") as src:
        chunk = np.ascontiguousarray(src.data, dtype=np.float32)  # ``base`` images: the only ones in RAM
        voxel = float(src.voxel_size.x)
    stack = folder / "particles.mrcs"
    with mrcfile.new_mmap(stack, shape=(n, box, box), mrc_mode=2, overwrite=True) as mrc:
        mrc.set_image_stack()
        mrc.voxel_size = voxel
        offset = int(mrc.data.offset)
    # Written with pwrite, not through the map: written pages of a map stay in this process's RSS (and a
    # child's peak RSS counts its parent's at fork).
    fd = os.open(stack, os.O_WRONLY)
    try:
        for start in range(0, n, base):
            count = min(base, n - start)
            os.pwrite(fd, chunk[:count].tobytes(), offset + start * chunk[0].nbytes)
    finally:
        os.close(fd)
    rows = tables["particles"].iloc[np.arange(n) % base].reset_index(drop=True)
    rows["rlnImageName"] = [f"{i + 1}@particles.mrcs" for i in range(n)]
    starfile.write({"optics": tables["optics"], "particles": rows}, star, overwrite=True)
    return star


# ------------------------------------------------------------------------------------------- measure
def _peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss, not inherited from the parent)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux: kB there too


def measure(args: argparse.Namespace) -> None:
    """Run inside each benchmark process: time the stages, read the stack, print one RESULT line."""
    import torch

    from napari_cryospin.engine import distributed
    from napari_cryospin.engine.config import RunConfig
    from napari_cryospin.engine.doubtful_poses import ROTATIONS, batch_size, search_batch
    from napari_cryospin.engine.engine import Engine
    from napari_cryospin.engine.events import Stage
    from napari_cryospin.engine.local_refine import SHIFT_STEPS, WORKING_ROUNDS, best_local_poses
    from napari_cryospin.engine.mates import check_batch, map_twofolds
    from napari_cryospin.engine.research import BATCH as RESEARCH_BATCH
    from napari_cryospin.engine.research import ball
    from napari_cryospin.geometry.rotations import random_rotations
    from napari_cryospin.model.likelihood import prepare_batch, shift_grid
    from napari_cryospin.model.poses import ParticlePoses
    from napari_cryospin.physics.reconstruction import accumulate
    from napari_cryospin.physics.slicing import extract_slices

    torch.set_num_threads(args.threads)
    out = Path(tempfile.mkdtemp(prefix="scale-run-"))
    cfg = RunConfig(
        particles=str(args.particles), out=str(out / "run"), device=args.device, seed=0, polarity="dark"
    )
    t0 = time.perf_counter()
    engine = Engine(cfg)
    engine._build()
    build_s = time.perf_counter() - t0
    dp, sch, n = engine.dp, engine.model.schedule, engine.model.n
    perm = distributed.balanced_order(np.random.default_rng(0).permutation(n), engine.model.halves_np)
    pos = 0

    def timed(step, batch: int, sync: bool = True) -> float:
        nonlocal pos
        rates = []
        for k in range(args.batches + 1):  # the first batch warms up and is not counted
            idx = perm[pos % n : pos % n + min(batch, args.max_batch or batch)]
            pos += len(idx)
            dp.sum_scalar(0.0)  # all processes start together
            t = time.perf_counter()
            part = dp.split(
                idx, engine.model.halves_np, engine._halves_owned()
            )  # decoding: by half, as in a run
            step(part)
            if sync:
                dp.sync_rows(distributed.particle_state(engine.model, engine.stages.pose_opt), idx)
            dp.sum_scalar(0.0)
            if k:
                rates.append(len(idx) / (time.perf_counter() - t))
        return float(np.median(rates))

    last = max(sch.explore_epochs - 1, 0)
    engine.model.epoch = last
    rate = {}
    explore_points = sch.points(engine.model.disk, Stage.EXPLORING, last)
    rate["explore"] = timed(lambda p: engine.stages.exploring_step(p, explore_points), sch.explore_batch)
    engine.model.stage = Stage.ENCODING
    enc_points = sch.points(engine.model.disk, Stage.ENCODING, last + 1)
    rate["encode"] = timed(lambda p: engine.stages.encoding_step(p, enc_points), cfg.batch_size)
    engine.model.stage = Stage.DECODING
    engine.model.poses = ParticlePoses(engine.model.best_rot, engine.model.best_shift).to(engine.device)
    engine.stages.pose_opt = engine.stages.pose_optimizer()
    dec_points = sch.points(engine.model.disk, Stage.DECODING, cfg.epochs - 1)
    rate["decode"] = timed(lambda p: engine.stages.decoding_step(p, dec_points), cfg.batch_size)
    model, twofolds = engine.model, map_twofolds(engine.model)

    def research(part: np.ndarray) -> None:
        with torch.no_grad():
            engine.stages._research_batch(part, dec_points, explore_points, twofolds)

    def mate_check(part: np.ndarray) -> None:
        batch = model.batch(part)
        r, s = model.poses(batch.idx)
        with model.volume.frozen(model.reference_weight, model.reference_mask):
            check_batch(model, batch, (r, s), dec_points, twofolds, np.zeros((0, 3, 3)), held_out=False)

    ball_deg, window, points = WORKING_ROUNDS[0]
    turns = ball(ball_deg, 0, engine.device, points)
    offsets = shift_grid(window, window / SHIFT_STEPS, engine.device)
    grid, k = model.volume.hartley(0).detach(), model.disk.k[:dec_points]

    def local_refine(part: np.ndarray) -> None:
        idx = torch.as_tensor(part, device=engine.device)
        images = torch.as_tensor(model.particles.stack[part], device=engine.device)
        b = prepare_batch(idx, images, model.particles.ctf, model.disk, None)
        r, s = model.poses(idx)
        with torch.no_grad():
            best_local_poses(
                grid,
                b.spectrum[:, :dec_points],
                b.ctf[:, :dec_points],
                k,
                model.disk.box,
                r,
                s,
                turns,
                offsets,
            )

    rotations = random_rotations(ROTATIONS, torch.Generator().manual_seed(0)).to(engine.device)
    table = extract_slices(grid, rotations, k)  # one per held-out map, which serves thousands of particles
    power = table * table

    def doubtful(part: np.ndarray) -> None:
        idx = torch.as_tensor(part, device=engine.device)
        images = torch.as_tensor(model.particles.stack[part], device=engine.device)
        b = prepare_batch(idx, images, model.particles.ctf, model.disk, None)
        spectrum, ctf = b.spectrum[:, :dec_points], b.ctf[:, :dec_points]
        search_batch(grid, (table, power), rotations, spectrum, ctf, k, model.disk.box, model.poses(idx), 0)

    rate["research"] = timed(research, RESEARCH_BATCH)
    rate["check"] = timed(mate_check, 256, sync=False)
    rate["local_refine"] = timed(local_refine, 16, sync=False)
    rate["doubtful"] = timed(doubtful, batch_size(ROTATIONS, model.disk.box), sync=False)
    rot, shift = engine.model.best_rot.numpy(), engine.model.best_shift.numpy()
    rate["backproject"] = timed(
        lambda p: accumulate(engine.model.particles, rot, shift, p, device=engine.device), 256, sync=False
    )
    dp.sum_scalar(0.0)
    t = time.perf_counter()
    block = dp.block(n)
    for start in range(0, len(block), 1024):
        engine.model.particles.stack[block[start : start + 1024]]
    dp.sum_scalar(0.0)
    read_s = time.perf_counter() - t
    rss_mb = _peak_rss_mb()
    gpu_mb = torch.cuda.max_memory_allocated(engine.device) / 2**20 if engine.device.type == "cuda" else None
    rss_mb = (
        dp._all_reduce(torch.tensor([rss_mb]), torch.distributed.ReduceOp.MAX)[0].item()
        if dp.active
        else rss_mb
    )
    if dp.main:
        result = dict(
            n=n, box=engine.model.box, procs=dp.world, threads=args.threads, device=str(engine.device),
            **{f"{k}_ips": v for k, v in rate.items()}, rss_mb=rss_mb, gpu_mb=gpu_mb, read_s=read_s,
            build_s=build_s, load=_load(), batches=args.batches, max_batch=args.max_batch,
        )  # fmt: skip
        print("RESULT " + json.dumps(result), flush=True)
    distributed.shutdown()


# ------------------------------------------------------------------------------------------- driver
def run_case(star: Path, procs: int, args: argparse.Namespace, results: Path) -> dict:
    """One benchmark process group for ``star``; appends its result to ``results``."""
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    inner = [str(HERE / "scale.py"), "measure", "--particles", str(star), "--threads", str(args.threads)]
    inner += ["--batches", str(args.batches), "--device", args.device]
    inner += ["--max-batch", str(args.max_batch)] if args.max_batch else []
    if procs > 1:
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            str(procs),
        ]
        command += inner
    else:
        command = [sys.executable, *inner]
    try:
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        raise SystemExit(f"benchmark case timed out after {args.timeout} s: {' '.join(command)}") from None
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        raise SystemExit(f"benchmark case failed ({' '.join(command)}):\n{done.stderr[-3000:]}")
    result = json.loads(lines[-1][len("RESULT ") :])
    with open(results, "a") as fh:
        fh.write(json.dumps(result) + "\n")
    return result


def _rate(row: dict, key: str) -> str:
    """A rate with one decimal, or '-' in a row measured before the stage was timed."""
    return "-" if row.get(key) is None else f"{row[key]:.1f}"


def table(rows: list[dict]) -> str:
    """The results as one Markdown table (epoch times extrapolated from the measured rates)."""
    head = (
        "| N | box | procs × threads | explore img/s | encode img/s | decode img/s | re-search img/s | "
        "mate check img/s | local refinement img/s | doubtful search img/s | backproject img/s | "
        "peak RSS MB (per process) | "
        "full read pass s (measured) | explore epoch s (extrapolated) | decode epoch s (extrapolated) | "
        "re-search round s (extrapolated) | peak GPU MB | device | load at run |"
    )
    lines = [head, "|" + " --- |" * 19]
    rows = [
        {**r, "box": f"{r['box']} (batches ≤ {r['max_batch']})" if r.get("max_batch") else r["box"]}
        for r in rows
    ]
    for r in rows:
        lines.append(
            f"| {r['n']} | {r['box']} | {r['procs']} × {r['threads']} | {r['explore_ips']:.1f} | "
            f"{r['encode_ips']:.1f} | {r['decode_ips']:.1f} | {_rate(r, 'research_ips')} | "
            f"{_rate(r, 'check_ips')} | {_rate(r, 'local_refine_ips')} | {_rate(r, 'doubtful_ips')} | "
            f"{r['backproject_ips']:.0f} | "
            f"{r['rss_mb']:.0f} | "
            f"{r['read_s']:.1f} | {r['n'] / r['explore_ips']:.0f} | {r['n'] / r['decode_ips']:.0f} | "
            f"{'-' if not r.get('research_ips') else round(r['n'] / r['research_ips'])} | "
            f"{'-' if r.get('gpu_mb') is None else round(r['gpu_mb'])} | {r['device']} | "
            f"{r['load'].removeprefix('load ')} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Build the stacks, run the cases asked for, print the table of every result so far."""
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["measure"]:
        p = argparse.ArgumentParser()
        p.add_argument("measure")
        p.add_argument("--particles", type=Path, required=True)
        p.add_argument("--threads", type=int, default=1)
        p.add_argument("--batches", type=int, default=3)
        p.add_argument("--device", default="cpu")
        p.add_argument("--max-batch", type=int, default=None)
        measure(p.parse_args(argv))
        return 0
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=Path("bench-runs/scale"))
    p.add_argument("--n", type=int, nargs="*", default=[], help="particle counts at box 64 (1 process)")
    p.add_argument("--boxes", type=int, nargs="*", default=[], help="boxes at --box-n particles (1 process)")
    p.add_argument("--box-n", type=int, default=2000)
    p.add_argument("--procs", type=int, nargs="*", default=[], help="process counts at --procs-n, box 64")
    p.add_argument("--procs-n", type=int, default=10000)
    p.add_argument("--threads", type=int, default=1, help="threads per process")
    p.add_argument("--batches", type=int, default=3, help="timed batches per stage")
    p.add_argument("--base", type=int, default=2000, help="simulated particles tiled into the big stacks")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--max-batch", type=int, help="cap every timed batch (big boxes on a CPU; per-step costs grow)"
    )
    p.add_argument("--timeout", type=float, default=None, help="seconds allowed per case")
    p.add_argument("--table", action="store_true", help="only print the table of WORK/results.jsonl")
    args = p.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    results = args.work / "results.jsonl"
    cases = [(n, 64, 1) for n in args.n] + [(args.box_n, b, 1) for b in args.boxes]
    cases += [(args.procs_n, 64, k) for k in args.procs]
    if not args.table:
        for n, box, procs in cases:
            star = make_stack(args.work, n, box, min(args.base, n))
            r = run_case(star, procs, args, results)
            print(f"n={n} box={box} procs={procs}: done ({r['load']})", file=sys.stderr)
    rows = [json.loads(line) for line in results.read_text().splitlines()] if results.exists() else []
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
