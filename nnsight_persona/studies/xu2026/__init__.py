"""As X, Do Y (arXiv 2605.23147): capture, substitute, markers, inject, knockout, heads.

Each experiment module exposes a spec dataclass and run(loaded, grid, spec) -> Dataset;
assembly.py turns options into runs; commands.py holds this paper's click commands."""
