"""Command-line pieces no single study owns: the options and error handling every command shares,
the analysis commands (plot, compare, collect, report, grids, models), and reproduce / run SPEC."""
