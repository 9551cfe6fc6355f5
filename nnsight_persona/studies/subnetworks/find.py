"""`subnetwork find`: each persona's mask from its calibration items, and statistics of the masks.

For persona P with calibration rows (question, matching, not_matching), the samples are the chat
prompt asking the question (no persona prompt) followed by the matching answer (P's samples) or
the not-matching one (the opposite behaviour). Channel norms of every chosen nn.Linear are
recorded over the counted tokens of each sample (norms.py), then scored and masked (masks.py).
The weights are read here, so `find` runs on a model loaded here (not remotely).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass

from .data import PersonaSet
from .masks import ACTIVATIONS, METHODS, channel_mask, channel_weight, statistics, weight_mask
from .norms import TOKEN_CHOICES, encode, linear_names, record_norms

EXPERIMENT = "subnetwork-find"


@dataclass(frozen=True)
class FindSpec:
    persona_set: str
    personas: tuple[str, ...] = ()  # default: every persona of the set
    method: str = "contrastive"
    activation: str = "relu"
    tau: float = 2.0
    sparsities: tuple[float, ...] = (0.3,)
    mlp_only: bool = False
    head: bool = False
    structured: bool = False
    seed: int = 0
    tokens: str = "answer"
    batch_size: int = 16
    data_sha256: str = ""  # of the persona set's items: the same name with other items is another computation

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def data_digest(pset: PersonaSet) -> str:
    items = {n: [dataclasses.asdict(x) for x in p.calibration] for n, p in pset.personas.items()}
    return hashlib.sha256(json.dumps(items, sort_keys=True).encode()).hexdigest()[:16]


def check_spec(spec: FindSpec, pset: PersonaSet) -> None:
    from ...core.errors import SelectionError

    if spec.method not in METHODS:
        raise SelectionError(f"unknown method {spec.method!r}; allowed: {list(METHODS)}")
    if spec.activation not in ACTIVATIONS:
        raise SelectionError(f"unknown activation {spec.activation!r}; allowed: {list(ACTIVATIONS)}")
    if spec.tokens not in TOKEN_CHOICES:
        raise SelectionError(f"unknown tokens {spec.tokens!r}; allowed: {list(TOKEN_CHOICES)}")
    if not spec.tau > 0:
        raise SelectionError(f"tau must be > 0, got {spec.tau}")
    for s in spec.sparsities:
        if not 0 <= s < 1:
            raise SelectionError(f"sparsity {s} is out of range; allowed: 0 <= sparsity < 1")
    for p in spec.personas:
        pset.persona(p)


def persona_norms(loaded, pset: PersonaSet, persona: str, names: list[str], spec: FindSpec, progress: bool):
    """(matching, not_matching) channel norms of `persona`'s calibration samples."""
    items = pset.persona(persona).calibration
    out = []
    for column in ("matching", "not_matching"):
        seqs = [encode(loaded.tokenizer, it.question, getattr(it, column)) for it in items]
        out.append(record_norms(loaded, seqs, names, spec.tokens, spec.batch_size, progress,
                                desc=f"norms {persona} {column}"))
    return out


def run(loaded, pset: PersonaSet, spec: FindSpec, progress: bool = True):
    """(masks {(persona, sparsity): {module: bool tensor}}, statistics Dataset)."""
    from ...storage.provenance import provenance_attrs

    check_spec(spec, pset)
    personas = list(spec.personas or pset.personas)
    hf = loaded.lm._module
    names = linear_names(hf, loaded.adapter, spec.mlp_only, spec.head)
    make = channel_mask if spec.structured else weight_mask
    masks = {}
    for persona in personas:
        matching, not_matching = persona_norms(loaded, pset, persona, names, spec, progress)
        factors = {n: channel_weight(spec.method, matching[n], not_matching[n], spec.activation, spec.tau) for n in names}
        for sparsity in spec.sparsities:
            masks[(persona, float(sparsity))] = {
                n: make(hf.get_submodule(n).weight, factors[n], float(sparsity), spec.seed, n) for n in names}
    ds = statistics(masks, personas, [float(s) for s in spec.sparsities], names)
    ds.attrs.update(provenance_attrs(loaded, EXPERIMENT, spec.to_dict()))
    ds.attrs["mask_variant"] = "structured (input channels)" if spec.structured else "weights (per output row)"
    ds.attrs["completed"] = 1
    return masks, ds
