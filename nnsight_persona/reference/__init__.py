"""Numbers the reference papers report, shipped for side-by-side comparison."""
