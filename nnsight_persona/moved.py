"""Old import paths, from before the package was grouped into core/, storage/, models/, studies/,
commands/ and report/ (docs/architecture.md): `import nnsight_persona.store` still gives the module
that now lives at `nnsight_persona.storage.store` (the same module object, so patches reach it),
with a DeprecationWarning naming the new path. Installed by the package's __init__; imports nothing
until an old name is imported."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

# old path -> new path, both relative to the package
MOVED = {
    "aliases": "models.aliases",
    "assembly": "studies.xu2026.assembly",
    "assembly_subnetworks": "studies.subnetworks.assembly",
    "assembly_vectors": "studies.vectors.assembly",
    "batching": "core.batching",
    "cache": "storage.cache",
    "cli_analysis": "commands.analysis",
    "cli_common": "commands.common",
    "cli_subnetworks": "studies.subnetworks.commands",
    "cli_vectors": "studies.vectors.commands",
    "docblocks": "storage.docblocks",
    "edits": "core.edits",
    "errors": "core.errors",
    "experiments": "studies",
    "experiments.capture": "studies.xu2026.capture",
    "experiments.heads": "studies.xu2026.heads",
    "experiments.inject": "studies.xu2026.inject",
    "experiments.knockout": "studies.xu2026.knockout",
    "experiments.markers": "studies.xu2026.markers",
    "experiments.subnetworks": "studies.subnetworks",
    "experiments.subnetworks.apply": "studies.subnetworks.apply",
    "experiments.subnetworks.data": "studies.subnetworks.data",
    "experiments.subnetworks.evaluate": "studies.subnetworks.evaluate",
    "experiments.subnetworks.find": "studies.subnetworks.find",
    "experiments.subnetworks.masks": "studies.subnetworks.masks",
    "experiments.subnetworks.norms": "studies.subnetworks.norms",
    "experiments.substitute": "studies.xu2026.substitute",
    "experiments.vectors": "studies.vectors",
    "experiments.vectors.chat": "studies.vectors.chat",
    "experiments.vectors.elicitation": "studies.vectors.elicitation",
    "experiments.vectors.extract": "studies.vectors.extract",
    "experiments.vectors.io": "studies.vectors.io",
    "experiments.vectors.monitor": "studies.vectors.monitor",
    "experiments.vectors.passes": "studies.vectors.passes",
    "experiments.vectors.scorers": "studies.vectors.scorers",
    "experiments.vectors.steer": "studies.vectors.steer",
    "experiments.vectors.trace": "studies.vectors.trace",
    "experiments.vectors.traits": "studies.vectors.traits",
    "experiments.vectors.vs_edit": "studies.vectors.vs_edit",
    "grids": "core.grids",
    "manifest": "storage.manifest",
    "memory": "core.memory",
    "outputs": "storage.outputs",
    "preflight": "models.preflight",
    "progress": "core.progress",
    "prompts": "core.prompts",
    "provenance": "storage.provenance",
    "results": "storage.results",
    "scoring": "core.scoring",
    "selection": "core.selection",
    "sites": "core.sites",
    "smollm2": "models.smollm2",
    "stopping": "core.stopping",
    "store": "storage.store",
    "toy": "models.toy",
    "toy.cli": "models.toy.cli",
    "toy.content": "models.toy.content",
    "toy.corpus": "models.toy.corpus",
    "toy.evaluate": "models.toy.evaluate",
    "toy.model": "models.toy.model",
    "toy.tokenizer": "models.toy.tokenizer",
    "toy.train": "models.toy.train",
    "tracing": "core.tracing",
    "traffic": "core.traffic",
    "vectors": "core.replacements",
}


class _Alias(importlib.abc.Loader):
    def __init__(self, new: str):
        self.new = new

    def create_module(self, spec):
        return importlib.import_module(self.new)

    def exec_module(self, module):
        pass  # the new module ran already; the old name is only bound to it


class MovedModules(importlib.abc.MetaPathFinder):
    """Finds an old dotted name and hands back the module at its new place."""

    def __init__(self, package: str):
        self.package = package

    def find_spec(self, fullname, path=None, target=None):
        prefix = self.package + "."
        if not fullname.startswith(prefix):
            return None
        new = MOVED.get(fullname[len(prefix):])
        if new is None:
            return None
        warnings.warn(f"{fullname} moved to {prefix}{new}; the old path will be removed",
                      DeprecationWarning, stacklevel=2)
        return importlib.util.spec_from_loader(fullname, _Alias(prefix + new))


def install(package: str) -> None:
    if not any(isinstance(f, MovedModules) and f.package == package for f in sys.meta_path):
        # First, so that an old package path (experiments.vectors) is never found a second time
        # under its old name by the ordinary finder.
        sys.meta_path.insert(0, MovedModules(package))
