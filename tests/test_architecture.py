"""The package's folders are its architecture (docs/architecture.md): imports run one way, the
import graph has no circles (benchmarks included), each study is a self-contained folder mounted
by one line, and the old import paths still reach the moved modules.

The import graph is read from the source with ast (every import, also those inside functions), so
a circle that only closes at call time is caught too."""

from __future__ import annotations

import ast
import importlib
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "nnsight_persona"


def modules(base: str) -> dict[str, Path]:
    found = {}
    for path in (ROOT / base).rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def import_graph(known: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the modules of `known` it imports. `from pkg import name` counts pkg.name when that
    is a module (not pkg itself, whose __init__ Python runs anyway for any submodule)."""
    edges = {name: set() for name in known}
    for name, path in known.items():
        here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    anchor = here[: len(here) - node.level + 1]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                subs = [f"{base}.{a.name}" for a in node.names]
                targets = [s for s in subs if s in known] or [base]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            edges[name].update(t for t in targets if t in known and t != name)
    return edges


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, found, counter = {}, {}, set(), [], [], [0]
    for start in edges:
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = counter[0]
        counter[0] += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = counter[0]
                counter[0] += 1
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(edges[child]))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return found


def test_the_circle_finder_finds_a_planted_circle():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles_in_the_package_or_the_benchmarks():
    known = {**modules(PACKAGE), **modules("benchmarks")}
    assert circles(import_graph(known)) == []


def test_the_package_top_holds_few_modules():
    top = sorted(p.name for p in (ROOT / PACKAGE).glob("*.py"))
    assert len(top) <= 8, top


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


# What each lower folder may import from the package (docs/architecture.md, "The folders"); the
# package root itself is no layer (the model loader registers it with nnsight for remote runs).
ALLOWED = {
    "core": {"core"},
    "storage": {"core", "storage"},
    "models": {"core", "storage", "models"},
}


@pytest.mark.parametrize("folder", sorted(ALLOWED))
def test_lower_folders_import_only_what_lies_below_them(folder):
    edges = import_graph(modules(PACKAGE))
    upward = sorted(f"{m} -> {t}" for m, targets in edges.items() if _layer(m) == folder
                    for t in targets if _layer(t) not in ALLOWED[folder] | {"__init__"})
    assert upward == []


def test_nothing_imports_the_entry_points():
    edges = import_graph(modules(PACKAGE))
    tops = {f"{PACKAGE}.cli", f"{PACKAGE}.api", f"{PACKAGE}.commands.pipeline"}
    users = sorted(f"{m} -> {t}" for m, targets in edges.items() for t in targets & tops
                   if m not in (f"{PACKAGE}.cli", f"{PACKAGE}", f"{PACKAGE}.api"))
    assert users == []


def _studies() -> list[str]:
    return sorted(p.name for p in (ROOT / PACKAGE / "studies").iterdir() if (p / "__init__.py").exists())


def test_each_study_is_a_folder_with_its_assembly_commands_and_api_mounted_by_one_line():
    from nnsight_persona import cli

    assert sorted(cli.STUDIES) == _studies()
    for study in _studies():
        for part in ("assembly", "commands", "api"):
            assert (ROOT / PACKAGE / "studies" / study / f"{part}.py").exists(), (study, part)
        commands = importlib.import_module(f"{PACKAGE}.studies.{study}.commands").COMMANDS
        assert commands and all(cli.main.get_command(None, c.name) is c for c in commands)


def test_a_study_reads_no_other_studys_assembly_commands_or_api():
    edges = import_graph(modules(PACKAGE))
    crossing = []
    for module, targets in edges.items():
        parts = module.split(".")
        if parts[1:2] != ["studies"] or len(parts) < 4:
            continue
        for target in targets:
            t = target.split(".")
            if t[1:2] == ["studies"] and len(t) >= 4 and t[2] != parts[2] and t[3] in ("assembly", "commands", "api"):
                crossing.append(f"{module} -> {target}")
    assert crossing == []


def test_the_public_api_is_every_study_api_function():
    import nnsight_persona
    from nnsight_persona import api

    exported = set(api.__all__)
    for study in _studies():
        module = importlib.import_module(f"{PACKAGE}.studies.{study}.api")
        own = {n for n, v in vars(module).items() if callable(v) and not n.startswith("_")
               and getattr(v, "__module__", "") == module.__name__}
        assert own <= exported, (study, own - exported)
    for name in exported:
        assert getattr(nnsight_persona, name) is getattr(api, name)


@pytest.mark.parametrize("old, new", [
    ("nnsight_persona.store", "nnsight_persona.storage.store"),
    ("nnsight_persona.experiments.capture", "nnsight_persona.studies.xu2026.capture"),
    ("nnsight_persona.experiments.vectors.io", "nnsight_persona.studies.vectors.io"),
    ("nnsight_persona.vectors", "nnsight_persona.core.replacements"),
    ("nnsight_persona.toy", "nnsight_persona.models.toy"),
])
def test_old_import_paths_reach_the_moved_module_itself(old, new):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        moved = importlib.import_module(old)
    assert moved is importlib.import_module(new)
    assert any(issubclass(w.category, DeprecationWarning) and new in str(w.message) for w in caught)


def test_the_documented_old_import_still_works():
    from nnsight_persona.models import load_model
    from nnsight_persona.store import load_dataset  # noqa: F401 (README and docs once named it)

    from nnsight_persona.models.loading import load_model as loading_load_model

    assert load_model is loading_load_model
