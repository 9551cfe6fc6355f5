"""The `nnsight-persona` command line: the root group, which mounts each study's commands and the
commands no single study owns. Commands are thin (a study's commands.py maps options onto a spec,
runs it, writes the file); heavy imports happen inside them so `--help` stays fast."""

from __future__ import annotations

from importlib import import_module

import click

# Each study is a folder studies/<name>/ whose commands.py exports COMMANDS; one line here mounts it.
STUDIES = (
    "xu2026",       # As X, Do Y: capture, decompose, substitute, markers, inject, knockout, heads
    "vectors",      # persona vectors: the `vectors ...` group
    "subnetworks",  # persona subnetworks: the `subnetwork ...` group
)
# Commands of the whole package: reproduce and run SPEC; plot, compare, collect, report; grids, models; toy.
SHARED = ("commands.pipeline", "commands.analysis", "commands.catalog", "models.toy.cli")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="nnsight-persona")
def main():
    """Persona-prompt interpretability experiments ("As X, do Y") with nnsight."""


def _mount() -> None:
    modules = [f".studies.{study}.commands" for study in STUDIES] + [f".{name}" for name in SHARED]
    for module in modules:
        for command in import_module(module, __package__).COMMANDS:
            main.add_command(command)


_mount()

if __name__ == "__main__":
    main()
