"""What every study shares: prompts and positions, declarative edits, the nnsight trace bodies that
apply them, per-family sites, batching, replacement vectors, scoring, stopping, memory and traffic."""
