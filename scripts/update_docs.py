"""Rewrite the generated blocks of README.md and docs/*.md from the files they quote.

    python scripts/update_docs.py          # rewrite in place
    python scripts/update_docs.py --check  # list stale blocks, exit 1 if any (what the test runs)
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.tables import GENERATORS as BENCHMARK_GENERATORS  # noqa: E402
from nnsight_persona.analysis.findings_tables import GENERATORS as FINDINGS_GENERATORS
from nnsight_persona.analysis.evidence_tables import GENERATORS as EVIDENCE_GENERATORS
from nnsight_persona.analysis.plan_tables import GENERATORS as PLAN_GENERATORS
from nnsight_persona.analysis.tables import GENERATORS as RESULT_GENERATORS
from nnsight_persona.analysis.toy_tables import GENERATORS as TOY_GENERATORS
from nnsight_persona.analysis.vector_tables import GENERATORS as VECTOR_GENERATORS
from nnsight_persona.storage.docblocks import refresh, stale
from scripts.tolerance_margins import GENERATORS as MARGIN_GENERATORS  # noqa: E402
from scripts.traffic_tables import GENERATORS as TRAFFIC_GENERATORS  # noqa: E402

GENERATORS = {**FINDINGS_GENERATORS, **RESULT_GENERATORS, **BENCHMARK_GENERATORS, **VECTOR_GENERATORS, **TOY_GENERATORS,
              **EVIDENCE_GENERATORS, **MARGIN_GENERATORS, **PLAN_GENERATORS,
              **TRAFFIC_GENERATORS}


def documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "tests" / "README.md"]


def main(argv: list[str]) -> int:
    import os

    os.chdir(ROOT)  # block arguments are paths relative to the repository root
    check = "--check" in argv
    bad = []
    for doc in documents():
        text = doc.read_text(encoding="utf-8")
        if check:
            bad += [f"{doc.relative_to(ROOT)}: {spec}" for spec in stale(text, GENERATORS)]
        else:
            new = refresh(text, GENERATORS)
            if new != text:
                doc.write_text(new, encoding="utf-8")
                print(f"updated {doc.relative_to(ROOT)}")
    for line in bad:
        print(f"stale: {line}")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
