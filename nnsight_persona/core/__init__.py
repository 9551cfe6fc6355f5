"""The computations every study shares: tracing, edits, batching, prompts, scoring."""
