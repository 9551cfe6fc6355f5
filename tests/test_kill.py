"""SIGKILL at random points of real CLI runs (separate processes) on the toy model.

After every kill, the output is never corrupt nor degraded: either the previous finished file is
intact (byte for byte) or the new result is complete, or, where there was nothing finished, an
unfinished result that reads back. The rerun finishes, and its result equals an uninterrupted
run. Kill times are drawn (seeded) uniformly over the running command, whose partial result is
written after every batch, so kills land in computations and in writes alike.
"""

import hashlib
import random
import time
from pathlib import Path


import cli_child
from nnsight_persona.storage.store import load_dataset, spec_of
from tolerances import SCORES, assert_close_per_vector

KILLS = 24
SEED = 13
CELLS = "pirate__weather,knight__story"
RUN = ["substitute", "--model", "toy", "--grid", "toy", "--cells", CELLS, "--layers", "2,5",
       "--positions", "p_last,g1", "--batch-size", "2", "--no-progress"]
OTHER = ["substitute", "--model", "toy", "--grid", "toy", "--cells", CELLS, "--layers", "3",
         "--positions", "p_last", "--batch-size", "8", "--no-progress"]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run(args, kill_after=None):
    """Run a child to its end, or SIGKILL it `kill_after` seconds after it is ready. Returns
    (killed, exit code, seconds it ran after being ready)."""
    child = cli_child.start(args, checkpoint_every_batch=True)
    process = child.process
    assert child.wait_ready(120), "the child never got ready"
    began = time.monotonic()
    if kill_after is not None:
        process.join(kill_after)
        if process.is_alive():
            process.kill()
    process.join(120)
    assert not process.is_alive()
    return process.exitcode == -9, process.exitcode, time.monotonic() - began


def assert_equal_runs(path: Path, reference):
    ds = load_dataset(path)
    assert ds.attrs["completed"] == 1
    assert_close_per_vector(ds.kl.values, reference.kl.values, SCORES, axis=None)  # rows batched anew on resuming


def test_sigkill_at_random_points_never_loses_a_result(tmp_path):
    rng = random.Random(SEED)
    reference_path = tmp_path / "reference.nc"
    killed, code, duration = run([*RUN, "--out", reference_path])
    assert code == 0
    reference = load_dataset(reference_path)
    fresh_dir, over_dir = tmp_path / "fresh", tmp_path / "overwrite"
    fresh_out, over_out = fresh_dir / "sub.nc", over_dir / "sub.nc"
    assert run([*OTHER, "--out", over_out])[1] == 0
    old = over_out.read_bytes()
    old_digest = digest(over_out)
    kills, trials, began = 0, 0, time.monotonic()
    seen = {"nothing": 0, "unfinished": 0, "complete": 0, "previous intact": 0}
    while kills < KILLS:
        trials += 1
        overwrite = rng.random() < 0.5
        out, extra = (over_out, ["--overwrite"]) if overwrite else (fresh_out, [])
        for _ in range(rng.choice([1, 1, 2])):  # sometimes a killed resume of a killed run
            was_killed, code, _ = run([*RUN, "--out", out, *extra], kill_after=rng.uniform(0, duration))
            kills += was_killed
            if not was_killed:  # it finished before its kill time
                assert code == 0
                assert_equal_runs(out, reference)
                continue
            if not out.exists():
                assert not overwrite
                seen["nothing"] += 1
                continue
            ds = load_dataset(out)  # never corrupt: it reads back
            if overwrite and digest(out) == old_digest:
                seen["previous intact"] += 1
                continue
            assert spec_of(ds)["layers"] == [2, 5]
            if ds.attrs["completed"]:
                assert_equal_runs(out, reference)
                seen["complete"] += 1
            else:
                assert not overwrite, "a finished file was replaced by an unfinished one"
                seen["unfinished"] += 1
        killed, code, _ = run([*RUN, "--out", out, *extra])  # the rerun finishes...
        assert code == 0
        assert_equal_runs(out, reference)  # ...and equals an uninterrupted run
        if overwrite:
            over_out.write_bytes(old)  # the next trial overwrites the finished file of OTHER again
        else:
            out.unlink()
    elapsed = time.monotonic() - began
    print(f"\n{kills} kills in {trials} trials, {elapsed:.0f} s (uninterrupted run: {duration:.2f} s after load); "
          f"after the kills the output held: {seen}")
    for folder in (fresh_dir, over_dir):  # killed writers' temp files and the locks are gone
        assert sorted(p.name for p in folder.iterdir()) == ([] if folder == fresh_dir else ["sub.nc"])
