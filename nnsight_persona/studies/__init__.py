"""One folder per paper: its runs, their assembly from options, and its click commands (docs/architecture.md)."""
