"""What the evidence measure adds to `reproduce`: one whole `reproduce` run in this process (a fresh
folder, warm model cache), with every call of `core.evidence.score_answers` timed, so the scoring's
share is measured in the same run as the total it is a share of:

    python -m benchmarks.evidence_cost --model smollm2   # writes benchmarks/results/evidence-cost-smollm2.json

Scoring is the only work the measure adds (two teacher-forced passes per answer, on the unedited
model); the answers themselves are generated whether or not they are scored.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from benchmarks.machine import RESULTS, machine


def timed_reproduce_with_scoring(model: str, out_dir: Path) -> dict:
    from click.testing import CliRunner

    from nnsight_persona.cli import main as cli
    from nnsight_persona.core import evidence

    original = evidence.score_answers
    calls: list[dict] = []

    def timed(loaded, persona_prompts, reference_prompts, answers, *args, **kwargs):
        start = time.perf_counter()
        try:
            return original(loaded, persona_prompts, reference_prompts, answers, *args, **kwargs)
        finally:
            calls.append({"answers": len(answers), "seconds": time.perf_counter() - start})

    evidence.score_answers = timed
    try:
        start = time.perf_counter()
        result = CliRunner().invoke(cli, ["reproduce", "--model", model, "--out-dir", str(out_dir), "--no-progress"],
                                    catch_exceptions=False)
        total = time.perf_counter() - start
    finally:
        evidence.score_answers = original
    if result.exit_code != 0:
        raise SystemExit(f"reproduce failed with exit code {result.exit_code}:\n{result.output[-2000:]}")
    scoring = sum(c["seconds"] for c in calls)
    return {"total_s": total, "scoring_s": scoring, "share": scoring / total, "calls": len(calls),
            "answers_scored": sum(c["answers"] for c in calls)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="toy")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        record = timed_reproduce_with_scoring(args.model, Path(tmp) / "out")
    record.update(model=args.model, machine=machine())
    out = args.out or RESULTS / f"evidence-cost-{args.model}.json"
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps({k: v for k, v in record.items() if k != "machine"}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
