"""The docs run: every fenced block of README.md and docs/*.md is code that works or is skipped
with its reason.

- python: run in a sandbox folder, after the earlier Python blocks of the same file (one namespace
  per file, as a reader would type them);
- bash: every command runs in the sandbox (`nnsight-persona ...` and `python -m nnsight_persona...`
  through the CLI in-process, globs expanded) and must exit 0;
- yaml: a grid is validated as a grid, a spec (with `steps`) by `run --dry-run`;
- text, jinja: shown output and templates, not run.

A block preceded by the line `<!-- no-test: REASON -->` is skipped with REASON (pytest -rs lists
them); at most MAX_SKIPPED may be. The sandbox holds a copy of artifacts/toy under artifacts/toy
(and artifacts/smollm2 without its figures) and the short grid's under runs/toy (as `reproduce`
writes them), so nothing in the checkout is written.
"""

import glob
import re
import shlex
import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LANGUAGES = {"python", "bash", "yaml", "text", "jinja"}
MAX_SKIPPED = 6
BLOCK = re.compile(r"(?:^<!-- no-test: (?P<reason>.+?) -->\n)?^```(?P<lang>[^\n`]*)\n(?P<body>.*?)^```[ \t]*$",
                   re.M | re.S)


def blocks(path: Path) -> list[dict]:
    text = path.read_text()
    found = []
    for match in BLOCK.finditer(text):
        line = text.count("\n", 0, match.start("lang")) + 1
        found.append({"file": path, "line": line, "lang": match["lang"].strip(), "body": match["body"],
                      "skip": match["reason"]})
    return found


ALL = [b for path in DOCS for b in blocks(path)]
CODE = [b for b in ALL if b["lang"] in {"python", "bash", "yaml"}]


def block_id(block) -> str:
    return f"{block['file'].relative_to(ROOT)}:{block['line']}"


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    root = tmp_path_factory.mktemp("docs")
    shutil.copytree(ROOT / "artifacts" / "toy", root / "artifacts" / "toy")
    shutil.copytree(ROOT / "artifacts" / "smollm2", root / "artifacts" / "smollm2",
                    ignore=shutil.ignore_patterns("*.png"))
    # runs/toy as `reproduce` leaves it, for the short grid only (quicker to plot), less the
    # decomposition, which the docs' recipes make
    shutil.copytree(ROOT / "artifacts" / "toy", root / "runs" / "toy",
                    ignore=shutil.ignore_patterns("decompose-*", "*-toy-long*", "*.png"))
    return root


def test_every_block_is_labelled_and_few_are_skipped():
    unlabelled = [block_id(b) for b in ALL if b["lang"] not in LANGUAGES]
    assert not unlabelled, f"label these blocks with one of {sorted(LANGUAGES)}: {unlabelled}"
    skipped = [f"{block_id(b)} ({b['skip']})" for b in ALL if b["skip"]]
    assert len(skipped) <= MAX_SKIPPED, f"{len(skipped)} blocks skipped: {skipped}"
    assert len(CODE) >= 10  # the parser still finds the docs' code


def _run_python(block, sandbox, monkeypatch):
    monkeypatch.chdir(sandbox)
    namespace = {"__name__": "__doc_block__"}
    earlier = [b for b in CODE if b["file"] == block["file"] and b["lang"] == "python" and b["line"] < block["line"]]
    for b in [*earlier, block]:
        if b["skip"] and b is not block:
            continue
        exec(compile(b["body"], block_id(b), "exec"), namespace)


def _commands(body: str):
    """Shell commands of a block: one per line (backslash continuations joined, comments dropped),
    split at `&&`."""
    for line in body.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        command = []
        for word in words + ["&&"]:
            if word == "&&":
                if command:
                    yield command
                command = []
            else:
                command.append(word)


def _run_shell(block, sandbox, monkeypatch):
    from nnsight_persona.cli import main
    from nnsight_persona.models.toy.cli import toy

    monkeypatch.chdir(sandbox)
    for words in _commands(block["body"]):
        args = [match for w in words[1:] for match in (sorted(glob.glob(w)) if "*" in w else [w])]
        if words[0] == "nnsight-persona":
            group = main
        elif words[:3] == ["python", "-m", "nnsight_persona.models.toy"]:
            group, args = toy, args[2:]
        elif words[:3] == ["python", "-m", "nnsight_persona.cli"]:
            group, args = main, args[2:]
        else:
            pytest.fail(f"{block_id(block)}: cannot run {words[0]!r} here; mark the block <!-- no-test: REASON -->")
        result = CliRunner().invoke(group, args)
        assert result.exit_code == 0, f"{block_id(block)}: {shlex.join(words)}\n{result.output}"


def _run_yaml(block, sandbox, monkeypatch):
    from nnsight_persona.cli import main
    from nnsight_persona.core.grids import grid_from_dict

    data = yaml.safe_load(block["body"])
    if isinstance(data, dict) and "steps" in data:
        monkeypatch.chdir(sandbox)
        spec = sandbox / "doc-spec.yaml"
        spec.write_text(block["body"])
        result = CliRunner().invoke(main, ["run", str(spec), "--dry-run"])
        assert result.exit_code == 0, result.output
    else:
        grid_from_dict(data, where=block_id(block))


@pytest.mark.parametrize("block", CODE, ids=block_id)
def test_doc_block_runs(block, sandbox, monkeypatch):
    if block["skip"]:
        pytest.skip(f"{block_id(block)}: {block['skip']}")
    {"python": _run_python, "bash": _run_shell, "yaml": _run_yaml}[block["lang"]](block, sandbox, monkeypatch)


def test_a_broken_block_fails(sandbox, monkeypatch):
    """The runners really fail on broken code (so a passing doc block means something)."""
    fake = {"file": ROOT / "README.md", "line": 0, "skip": None}
    with pytest.raises(NameError):
        _run_python({**fake, "lang": "python", "body": "delta_vectors(capture)\n"}, sandbox, monkeypatch)
    with pytest.raises(AssertionError):
        _run_shell({**fake, "lang": "bash", "body": "nnsight-persona plot runs/nowhere/x.nc\n"}, sandbox, monkeypatch)
    with pytest.raises(Exception):
        _run_yaml({**fake, "lang": "yaml", "body": "personas: {a: A}\n"}, sandbox, monkeypatch)
