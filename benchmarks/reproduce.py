"""The whole `nnsight-persona reproduce` timed step by step, for the current tree and optionally an
earlier commit, one after the other in one run (each into a fresh folder, with a warm model cache):

    python -m benchmarks.reproduce --model smollm2 --before 2104037   # writes benchmarks/results/reproduce-smollm2.json

A step's time runs from the end of the previous step's files to the end of its own, read from the
"wrote ..." lines reproduce prints; figures are drawn inside the step that made their dataset.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.machine import RESULTS, machine

ROOT = Path(__file__).resolve().parent.parent
WROTE = re.compile(r"^wrote (?P<path>\S+?\.(nc|png|html|json))\s*$")


def timed_reproduce(tree: Path, model: str, out_dir: Path) -> dict:
    """Run reproduce from the code in `tree`; (step -> seconds, total seconds)."""
    command = [sys.executable, "-m", "nnsight_persona.cli", "reproduce", "--model", model, "--out-dir", str(out_dir),
               "--no-progress"]
    start = last = time.perf_counter()
    steps: dict[str, float] = {}
    with subprocess.Popen(command, cwd=tree, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        for line in proc.stdout:
            match = WROTE.match(line.strip())
            if not match:
                continue
            now = time.perf_counter()
            name = Path(match["path"]).name
            if name.endswith(".nc"):
                steps[name[:-3]] = now - last
            elif steps:  # a figure or the manifest: part of the step before it
                steps[list(steps)[-1]] += now - last
            last = now
    if proc.returncode != 0:
        raise SystemExit(f"reproduce in {tree} failed with exit code {proc.returncode}")
    return {"steps_s": steps, "total_s": time.perf_counter() - start}


def git(*args: str, cwd: Path = ROOT) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="toy")
    parser.add_argument("--before", help="an earlier commit to time first (checked out in a temporary worktree)")
    parser.add_argument("--keep", type=Path, help="a new folder to keep the current tree's results in")
    parser.add_argument("--before-run", type=Path,
                        help="instead of --before: a JSON record (commit, steps_s, total_s, measured) of an earlier "
                             "commit's run made separately on the same idle machine; the table says so")
    args = parser.parse_args()
    runs = {}
    if args.before_run:
        runs["before"] = json.loads(args.before_run.read_text(encoding="utf-8"))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.before:
            tree = tmp / "before"
            git("worktree", "add", "--detach", str(tree), args.before)
            try:
                runs["before"] = {"commit": git("rev-parse", "--short", args.before),
                                  **timed_reproduce(tree, args.model, tmp / "out-before")}
            finally:
                git("worktree", "remove", "--force", str(tree))
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
        runs["after"] = {"commit": git("rev-parse", "--short", "HEAD") + ("+uncommitted" if dirty else ""),
                         **timed_reproduce(ROOT, args.model, args.keep or tmp / "out-after")}
    result = {"benchmark": "reproduce", "model": args.model, "runs": runs, "machine": machine()}
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"reproduce-{args.model}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
