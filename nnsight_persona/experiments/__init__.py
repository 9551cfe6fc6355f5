"""One module per experiment; each exposes a spec dataclass and run(loaded, grid, spec) -> Dataset."""
