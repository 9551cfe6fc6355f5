"""Persona subnetworks (arXiv:2602.07164): masks over a model's linear layers found from
calibration activations (`find`), and their evaluation without any persona prompt (`evaluate`).

Modules: `data` (persona sets and their CSV/YAML files), `norms` (per-input-channel activation
norms recorded through nnsight), `masks` (scores, per-row top-k, random masks, files, statistics),
`apply` (a masked copy of the weights; whole-channel masks as activation edits), `find`, `evaluate`.
"""
