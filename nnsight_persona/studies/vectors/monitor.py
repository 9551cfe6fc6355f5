"""monitor: how far prompts and answers lie along a persona vector.

For each trait and evaluation question, under three conditions (the question alone, the
positive and the negative instruction of pair 0), the greedy answer is generated and one pass
over prompt + answer gives, at every layer of the vector file, the projection on the unit vector
v / |v| and the cosine with v of the last prompt token (``prompt_last``) and of the mean answer
residual (``response_avg``). E.g. how far a system prompt moves the last prompt token along v:
proj(pos) - proj(none).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import xarray as xr

from ...core.errors import SelectionError
from ...storage.provenance import provenance_attrs
from .chat import render
from .passes import TOKEN_SETS, generate_answers, token_set_means

CONDITIONS = ("none", "pos", "neg")
READ_SETS = ("prompt_last", "response_avg")


@dataclass(frozen=True)
class MonitorSpec:
    traits: tuple[str, ...]
    layers: tuple[int, ...]
    token_set: str = "response_avg"  # which vector of the file
    n_tokens: int = 32
    n_questions: int = 0
    batch_size: int = 16
    vectors_file: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def projections(h: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(projection of h on v/|v|, cosine of h and v) along the last axis."""
    vn = np.linalg.norm(v, axis=-1)
    proj = (h * v).sum(-1) / vn
    return proj, proj / np.linalg.norm(h, axis=-1)


def run(loaded, traits, vectors: xr.Dataset, spec: MonitorSpec, progress: bool = True, previous=None,
        checkpoint=None) -> xr.Dataset:
    missing = [L for L in spec.layers if L not in vectors.layer.values.tolist()]
    if missing:
        raise SelectionError(f"the vectors file has no layer {missing}; it holds {vectors.layer.values.tolist()}")
    by_name = {t.name: t for t in traits}
    traits = [by_name[n] for n in spec.traits]
    nq = min(len(t.eval_questions[: spec.n_questions or None]) for t in traits)
    tok = loaded.tokenizer
    rows = [(t, c, qi, q) for t in traits for c in CONDITIONS for qi, q in enumerate(t.eval_questions[:nq])]
    prompts = [render(tok, t.messages(c, 0, q)) for t, c, _, q in rows]
    answers = generate_answers(loaded, prompts, spec.n_tokens, spec.batch_size, progress=progress, desc="monitor")
    layers = list(spec.layers)
    means, _ = token_set_means(loaded, prompts, answers, layers, spec.batch_size, progress=progress)
    read = [TOKEN_SETS.index(s) for s in READ_SETS]
    shape = (len(traits), len(CONDITIONS), nq, len(READ_SETS), len(layers))
    proj, cos = np.full(shape, np.nan), np.full(shape, np.nan)
    text = np.full(shape[:3], "", dtype=object)
    for i, (t, c, qi, _) in enumerate(rows):
        v = vectors.vector.sel(trait=t.name, token_set=spec.token_set, layer=layers).isel(model=0, checkpoint=0).values
        k = (spec.traits.index(t.name), CONDITIONS.index(c), qi)
        p, cs = projections(means[i][read], v[None])
        proj[k], cos[k] = p, cs
        text[k] = tok.decode(answers[i], skip_special_tokens=True)
    dims = ("model", "trait", "condition", "question", "read", "layer")
    ds = xr.Dataset(
        {"projection": (dims, proj[None]), "cosine": (dims, cos[None]), "text": (dims[:4], text[None])},
        coords={"model": [loaded.model_id], "trait": list(spec.traits), "condition": list(CONDITIONS),
                "question": list(range(nq)), "read": list(READ_SETS), "layer": layers},
        attrs=provenance_attrs(loaded, "vectors-monitor", spec.to_dict()),
    )
    ds.attrs["completed"] = 1
    ds["projection"].attrs.update(long_name="projection on the unit persona vector")
    ds["cosine"].attrs.update(long_name="cosine with the persona vector")
    return ds
