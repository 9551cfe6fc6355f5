"""Persona vectors (Chen et al. 2025) and tracing them across training checkpoints
(Moskvoretskii et al. 2026): trait files, extraction, steering, monitoring and checkpoint traces.

Layer convention: the package's, L = hidden_states[L] (0 = embeddings, L = output of block L-1;
n_layers = the last block's raw output, before the final norm).
"""
