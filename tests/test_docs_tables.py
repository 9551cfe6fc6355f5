"""Numbers quoted in the docs come from the files: every generated block equals what its
generator makes from the committed file now (scripts/update_docs.py rewrites them)."""

import importlib.util
from pathlib import Path

import pytest

from nnsight_persona.storage.docblocks import refresh, specs, stale

ROOT = Path(__file__).resolve().parent.parent


def _script():
    spec = importlib.util.spec_from_file_location("update_docs", ROOT / "scripts" / "update_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_blocks_are_current(monkeypatch):
    script = _script()
    monkeypatch.chdir(ROOT)
    blocks, bad = 0, []
    for doc in script.documents():
        text = doc.read_text(encoding="utf-8")
        blocks += len(specs(text))
        bad += [f"{doc.name}: {s}" for s in stale(text, script.GENERATORS)]
    assert blocks >= 5, "the docs should quote their tables through generated blocks"
    assert not bad, "stale generated blocks (run `python scripts/update_docs.py`):\n" + "\n".join(bad)


def test_a_hand_edited_number_is_caught():
    generators = {"twice": lambda x: f"| {2 * int(x)} |"}
    text = "intro\n<!-- generated: twice 21 -->\n| 42 |\n<!-- /generated -->\nend\n"
    assert stale(text, generators) == []
    edited = text.replace("| 42 |", "| 43 |")
    assert stale(edited, generators) == ["twice 21"]
    assert refresh(edited, generators) == text
    with pytest.raises(KeyError, match="unknown generated block kind"):
        refresh(text.replace("twice", "thrice"), generators)
