"""steer: add coef x v to the residual at layer L (hidden_states[L], the output of block L-1)
while generating, and score the answers for the trait and for coherence.

Positions (``--positions``), as the original's modes:
- ``response``: the last position of every forward pass: the last prompt token at the prefill,
  then each new token (the original's default);
- ``prompt``: every prompt token, at the prefill only;
- ``all``: both.
Scale (``--scale``): ``raw`` adds coef x v; ``norm`` adds coef x (mean residual norm of the
steered model at L) x v / |v| (the pretraining paper's); ``ratio`` adds coef x (target / source
mean residual norm at L) x v, for a vector moved between models or checkpoints.

Each steering edit is a GenerationEdit with add=True, carried by the package's one generation
trace (tracing.generate_with_edit). Controls: a seeded Gaussian vector and the label-shuffled
vector of extraction, both rescaled to the vector's norm at each layer. Baselines: the question
alone (``clean``) and the trait's own positive instruction (``prompted``, the prompting
baseline). The steering score is AxBench's: the harmonic mean of trait score and coherence per
question, averaged over questions.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import xarray as xr

from ...core.edits import GenerationEdit
from ...core.errors import SelectionError
from ...storage.provenance import provenance_attrs
from .chat import render
from .passes import check_layers, generate_answers, token_set_means
from . import trait_evidence
from .scorers import make_scorer

POSITIONS = ("response", "prompt", "all")
SCALES = ("raw", "norm", "ratio")
KINDS = ("vector", "random", "shuffled")
BASELINES = ("clean", "prompted")


@dataclass(frozen=True)
class SteerSpec:
    traits: tuple[str, ...]
    layers: tuple[int, ...]
    coefs: tuple[float, ...]
    positions: str = "response"
    scale: str = "raw"
    kinds: tuple[str, ...] = KINDS
    token_set: str = "response_avg"
    n_tokens: int = 32
    n_questions: int = 0  # 0: every evaluation question
    seeds: tuple[int, ...] = (0,)  # of the random and label-shuffled controls (one kind per seed)
    scorer: str = "offline"
    judge_model: str = "judge"
    batch_size: int = 16
    vectors_file: str = ""
    vectors_source: tuple = ()  # provenance of the vectors (model, revision, checkpoint)
    # ((trait, layer, factor), ...): fixed multipliers of v replacing --scale, for a vector moved
    # from another checkpoint (trace: its own factor there x target / source residual norm).
    transfer: tuple = ()

    def to_dict(self) -> dict:
        return asdict(self)


def check_spec(spec: SteerSpec, n_layers: int, vectors: xr.Dataset | None = None) -> None:
    if spec.positions not in POSITIONS:
        raise SelectionError(f"unknown --positions {spec.positions!r}; allowed: {list(POSITIONS)}")
    if spec.scale not in SCALES:
        raise SelectionError(f"unknown --scale {spec.scale!r}; allowed: {list(SCALES)}")
    bad = [k for k in spec.kinds if k not in KINDS]
    if bad or not spec.kinds:
        raise SelectionError(f"unknown vector kind(s) {bad or list(spec.kinds)}; allowed: {list(KINDS)}")
    check_layers(spec.layers, n_layers)
    if not spec.coefs:
        raise SelectionError("--coefs needs at least one coefficient")
    if vectors is not None:
        missing = [L for L in spec.layers if L not in vectors.layer.values.tolist()]
        if missing:
            raise SelectionError(f"the vectors file has no layer {missing}; it holds {vectors.layer.values.tolist()}")
        traits = [t for t in spec.traits if t not in vectors.trait.values.tolist()]
        if traits:
            raise SelectionError(f"the vectors file has no trait {traits}; it holds {vectors.trait.values.tolist()}")
        if "shuffled" in spec.kinds and "shuffled" not in vectors:
            raise SelectionError("the vectors file has no label-shuffled controls (an exported or imported file keeps "
                                 "only the vectors); use --kinds vector,random, or the extract .nc file")
        if spec.token_set not in vectors.token_set.values.tolist():
            raise SelectionError(f"the vectors file has no token set {spec.token_set!r}; it holds "
                                 f"{vectors.token_set.values.tolist()}")


def steering_edit(batch, layer: int, values: torch.Tensor, positions: str) -> GenerationEdit:
    """The GenerationEdit adding `values` [rows, hidden] (one vector per batch row) at `layer`:
    at the last prompt column (response), every prompt column (prompt), or both, and with
    response / all at every later step's new position."""
    n_rows, width = batch.input_ids.shape
    rows = torch.arange(n_rows)
    if positions == "response":
        cols, step_rows, step_values = torch.full((n_rows,), width - 1), rows, values
    else:
        per_row = [list(range(int(batch.pad[r]), width)) for r in range(n_rows)]
        step_rows = torch.tensor([r for r in range(n_rows) for _ in per_row[r]])
        cols = torch.tensor([c for r in range(n_rows) for c in per_row[r]])
        step_values = values[step_rows]
    deltas = values if positions in ("response", "all") else None
    return GenerationEdit(layer=layer, step=0, rows=step_rows, cols=cols, values=step_values, deltas=deltas, add=True,
                          delta_rows=rows)


def random_like(vector: np.ndarray, seed: int) -> np.ndarray:
    """A Gaussian direction (numpy seed `seed`) with the norm of `vector`."""
    g = np.random.default_rng(seed).standard_normal(vector.shape)
    return (g / np.linalg.norm(g) * np.linalg.norm(vector)).astype(np.float32)


def kind_labels(kinds, seeds) -> list[str]:
    """'vector', and each control once per seed: 'random_s0', 'shuffled_s0', ..."""
    return [k if k == "vector" else f"{k}_s{seed}" for k in kinds for seed in ((None,) if k == "vector" else seeds)]


def control_vectors(vectors: xr.Dataset, trait: str, layer: int, token_set: str, seeds, checkpoint: int = 0
                    ) -> dict[str, np.ndarray]:
    """The vector of `trait` at `layer` and its controls of equal norm, per seed: a Gaussian
    direction (numpy seed + 1000 x layer) and the label-shuffled vector of extraction."""
    sel = vectors.sel(trait=trait, layer=layer, token_set=token_set).isel(model=0, checkpoint=checkpoint)
    v = sel.vector.values.astype(np.float32)
    norm = np.linalg.norm(v)
    out = {"vector": v}
    for seed in seeds:
        shuffled = np.full_like(v, np.nan)
        if "shuffled" in sel and seed in sel.seed.values.tolist():
            shuffled = sel.shuffled.sel(seed=seed).values.astype(np.float32)
        if np.isfinite(shuffled).all() and np.linalg.norm(shuffled) > 0:
            shuffled = shuffled / np.linalg.norm(shuffled) * norm
        out[f"shuffled_s{seed}"] = shuffled
        out[f"random_s{seed}"] = random_like(v, seed + 1000 * layer)
    return out


def harmonic(trait: np.ndarray, coherence: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        h = 2 * trait * coherence / (trait + coherence)
    return np.where((trait == 0) | (coherence == 0), 0.0, h)


def run(loaded, traits, vectors: xr.Dataset, spec: SteerSpec, progress: bool = True, previous=None, checkpoint=None,
        scorer=None) -> xr.Dataset:
    check_spec(spec, loaded.n_layers, vectors)
    scorer = scorer or make_scorer(spec.scorer, spec.judge_model)
    by_name = {t.name: t for t in traits}
    traits = [by_name[name] for name in spec.traits]
    nq = max(min(len(t.eval_questions[: spec.n_questions or None]) for t in traits), 1)
    tok = loaded.tokenizer
    # 1. Baselines: the question alone and the prompting baseline, unsteered.
    base_rows = [(t, b, q) for t in traits for b in BASELINES for q in t.eval_questions[:nq]]
    base_prompts = [render(tok, t.messages("none" if b == "clean" else "pos", 0, q)) for t, b, q in base_rows]
    base_answers = generate_answers(loaded, base_prompts, spec.n_tokens, spec.batch_size, progress=progress,
                                    desc="steer: baselines")
    # The steered model's own residual norms (over the clean answers) for --scale norm / ratio.
    clean = [i for i, (_, b, _) in enumerate(base_rows) if b == "clean"]
    layers = sorted(set(spec.layers))
    _, norms = token_set_means(loaded, [base_prompts[i] for i in clean], [base_answers[i] for i in clean], layers,
                               spec.batch_size)
    target_norm = dict(zip(layers, np.nanmean(norms, axis=0)))
    # 2. Steered rows: (trait, kind, layer, coef, question), one layer per batch.
    rows, values = [], []
    for t in traits:
        for layer in spec.layers:
            controls = control_vectors(vectors, t.name, layer, spec.token_set, spec.seeds)
            source = float(vectors.resid_norm.sel(trait=t.name, layer=layer).isel(model=0, checkpoint=0))
            factor = scale_factor(spec.scale, controls["vector"], target_norm[layer], source)
            if spec.transfer:
                factor = fixed_factor(spec.transfer, t.name, layer)
            for kind in kind_labels(spec.kinds, spec.seeds):
                for coef in spec.coefs:
                    for qi, q in enumerate(t.eval_questions[:nq]):
                        rows.append((t, kind, layer, coef, qi, q))
                        values.append(controls[kind] * coef * factor)
    prompts = [render(tok, t.messages("none", 0, q)) for t, _, _, _, _, q in rows]
    order = sorted(range(len(rows)), key=lambda i: (rows[i][2], len(prompts[i])))
    layer_batches = []
    for layer in spec.layers:  # keep each batch on one layer
        layer_batches += [i for i in order if rows[i][2] == layer]

    def make_edit(idx, batch):
        layer_set = {rows[i][2] for i in idx}
        if len(layer_set) != 1:
            raise AssertionError("a steering batch spans layers")
        v = torch.from_numpy(np.nan_to_num(np.stack([values[i] for i in idx]), nan=0.0))
        return steering_edit(batch, layer_set.pop(), v, spec.positions)

    answers = _generate_by_layer(loaded, prompts, spec, make_edit, layer_batches, rows, progress)
    texts = [tok.decode(a, skip_special_tokens=True) for a in answers]
    base_texts = [tok.decode(a, skip_special_tokens=True) for a in base_answers]
    steer_t, steer_c, steer_e = _score(loaded, scorer, traits, rows, texts, spec, key=lambda r: r[0], answers=answers)
    base_t, base_c, base_e = _score(loaded, scorer, traits, base_rows, base_texts, spec, key=lambda r: r[0],
                                    answers=base_answers)
    ds = _dataset(loaded, traits, spec, nq, rows, texts, steer_t, steer_c, base_rows, base_texts, base_t, base_c,
                  values, target_norm, scorer)
    if steer_e is not None:
        add_evidence(ds, traits, rows, steer_e, base_rows, base_e)
    return ds


def scale_factor(scale: str, v: np.ndarray, target_norm: float, source_norm: float) -> float:
    norm = float(np.linalg.norm(v))
    if not np.isfinite(norm) or norm == 0:
        return 0.0
    if scale == "raw":
        return 1.0
    if scale == "norm":
        return target_norm / norm
    return target_norm / source_norm


def fixed_factor(transfer, trait: str, layer: int) -> float:
    """The multiplier a transferred vector of `trait` at `layer` steers with (SteerSpec.transfer)."""
    for name, at, factor in transfer:
        if name == trait and int(at) == layer:
            return float(factor)
    raise SelectionError(f"the transfer factors name no ({trait!r}, layer {layer}); they hold "
                         f"{[(n, int(a)) for n, a, _ in transfer]}")


def _generate_by_layer(loaded, prompts, spec, make_edit, order, rows, progress):
    answers = [None] * len(prompts)
    for layer in spec.layers:
        idx = [i for i in order if rows[i][2] == layer]
        got = generate_answers(loaded, [prompts[i] for i in idx], spec.n_tokens, spec.batch_size,
                               make_edit=lambda sub, batch: make_edit([idx[k] for k in sub], batch),
                               progress=progress, desc=f"steer: layer {layer}", order=list(range(len(idx))))
        for i, a in zip(idx, got):
            answers[i] = a
    return answers


def _score(loaded, scorer, traits, rows, texts, spec, key, answers=None):
    """(trait score, coherence, the evidence scorer's arrays or None) of each row's answer. The
    evidence scorer scores the token ids under pair 0's prompts of the row's question."""
    t_out, c_out = np.full(len(rows), np.nan), np.full(len(rows), np.nan)
    by_ids = getattr(scorer, "needs_ids", False)
    evidence = trait_evidence.empty(len(rows)) if by_ids else None
    for trait in traits:
        idx = [i for i, r in enumerate(rows) if key(r) is trait]
        if not idx:
            continue
        if by_ids:
            t, c, got = scorer.score_items(loaded, trait, [(0, rows[i][-1], "instruction") for i in idx],
                                           [answers[i] for i in idx], spec.batch_size)
            for name in evidence:
                evidence[name][idx] = got[name]
        else:
            t, c = scorer.score(loaded, trait, [rows[i][-1] for i in idx], [texts[i] for i in idx], spec.batch_size)
        t_out[idx], c_out[idx] = t, c
    return t_out, c_out, evidence


def add_evidence(ds, traits, rows, steer_e, base_rows, base_e) -> None:
    """The evidence scorer's variables, and its AxBench-style score: `trait_score` is evidence
    against the negative side (nats/token), put on 0-100 per trait by trait_evidence.calibrated_trait
    (0 at the clean baseline's mean, 100 at the prompting baseline's) as `trait_scaled`; the
    steering and baseline scores are the harmonic mean of that and coherence (100 x distinct
    3-grams), averaged over questions."""
    names, kinds = ds.trait.values.tolist(), ds.kind.values.tolist()
    layers, coefs = ds.layer.values.tolist(), ds.coef.values.tolist()
    nq, refs = ds.sizes["question"], list(trait_evidence.REFERENCES)
    shape, bshape = (len(names), len(kinds), len(layers), len(coefs), nq), (len(names), len(BASELINES), nq)
    steer = {n: np.full(shape + v.shape[1:], np.nan if v.dtype.kind == "f" else -1, dtype=v.dtype)
             for n, v in steer_e.items()}
    base = {n: np.full(bshape + v.shape[1:], np.nan if v.dtype.kind == "f" else -1, dtype=v.dtype)
            for n, v in base_e.items()}
    for i, (t, kind, layer, coef, qi, _) in enumerate(rows):
        k = (names.index(t.name), kinds.index(kind), layers.index(layer), coefs.index(coef), qi)
        for n in steer:
            steer[n][k] = steer_e[n][i]
    for i, (t, b, q) in enumerate(base_rows):
        k = (names.index(t.name), BASELINES.index(b), list(t.eval_questions).index(q))
        for n in base:
            base[n][k] = base_e[n][i]
    ds.coords["reference"] = refs
    dims, bdims = ("model", "trait", "kind", "layer", "coef", "question"), ("model", "trait", "baseline", "question")
    for n in steer:
        extra = ("reference",) if steer[n].ndim == len(shape) + 1 else ()
        ds[n] = (dims + extra, steer[n][None])
        ds[f"baseline_{n}"] = (bdims + extra, base[n][None])
        ds[n].attrs.update(trait_evidence.attrs(n))
        ds[f"baseline_{n}"].attrs.update(trait_evidence.attrs(n))
    trait, coherence = ds.trait_score.values[0], ds.coherence.values[0]
    b_trait, b_coh = ds.baseline_trait.values[0], ds.baseline_coherence.values[0]
    scaled, b_scaled = np.full(trait.shape, np.nan), np.full(b_trait.shape, np.nan)
    for k in range(len(names)):
        clean, prompted = np.nanmean(b_trait[k, 0]), np.nanmean(b_trait[k, 1])
        scaled[k] = trait_evidence.calibrated_trait(trait[k], clean, prompted)
        b_scaled[k] = trait_evidence.calibrated_trait(b_trait[k], clean, prompted)
    ds["trait_scaled"] = (dims, scaled[None])
    ds["baseline_trait_scaled"] = (bdims, b_scaled[None])
    ds["steering_score"] = (dims[:-1], np.nanmean(harmonic(scaled, coherence), axis=-1)[None])
    ds["baseline_score"] = (bdims[:-1], np.nanmean(harmonic(b_scaled, b_coh), axis=-1)[None])
    ds["trait_score"].attrs.update(long_name="evidence against the negative side (pair 0's prompts)", units="nats/token")
    ds["trait_scaled"].attrs.update(long_name="trait evidence on 0-100: 0 at the clean baseline's mean, 100 at the "
                                              "prompting baseline's, clipped (NaN when prompting does not raise it)")
    ds["coherence"].attrs.update(long_name="100 x fraction of distinct token 3-grams")
    ds["steering_score"].attrs.update(long_name="AxBench-style steering score: mean over questions of the harmonic "
                                                "mean of trait_scaled and coherence")
    ds["baseline_score"].attrs.update(long_name="the same score for the unsteered baselines")


def _dataset(loaded, traits, spec, nq, rows, texts, steer_t, steer_c, base_rows, base_texts, base_t, base_c,
             values, target_norm, scorer):
    names = [t.name for t in traits]
    kinds, layers, coefs = kind_labels(spec.kinds, spec.seeds), list(spec.layers), list(spec.coefs)
    shape = (len(names), len(kinds), len(layers), len(coefs), nq)
    trait_score, coherence = np.full(shape, np.nan), np.full(shape, np.nan)
    text = np.full(shape, "", dtype=object)
    added_norm = np.full(shape[:4], np.nan)
    for i, (t, kind, layer, coef, qi, _) in enumerate(rows):
        k = (names.index(t.name), kinds.index(kind), layers.index(layer), coefs.index(coef), qi)
        trait_score[k], coherence[k], text[k] = steer_t[i], steer_c[i], texts[i]
        added_norm[k[:4]] = float(np.linalg.norm(values[i]))
    bshape = (len(names), len(BASELINES), nq)
    b_trait, b_coh, b_text = np.full(bshape, np.nan), np.full(bshape, np.nan), np.full(bshape, "", dtype=object)
    for i, (t, b, q) in enumerate(base_rows):
        k = (names.index(t.name), BASELINES.index(b), list(t.eval_questions).index(q))
        b_trait[k], b_coh[k], b_text[k] = base_t[i], base_c[i], base_texts[i]
    import warnings

    warnings.filterwarnings("ignore", message="Mean of empty slice", category=RuntimeWarning)
    clean_t = b_trait[:, 0][:, None, None, None, :]
    delta = trait_score - clean_t
    sign = np.sign(np.array(coefs, dtype=float))[None, None, None, :, None]
    wrong = np.where(sign == 0, np.nan, (delta * sign < 0).astype(float))
    score = np.nanmean(harmonic(trait_score, coherence), axis=-1)
    base_score = np.nanmean(harmonic(b_trait, b_coh), axis=-1)
    dims = ("model", "trait", "kind", "layer", "coef", "question")
    ds = xr.Dataset(
        {
            "trait_score": (dims, trait_score[None]),
            "coherence": (dims, coherence[None]),
            "text": (dims, text[None]),
            "delta_trait": (dims, delta[None]),
            "steering_score": (dims[:-1], score[None]),
            "wrong_way": (dims[:-1], np.nanmean(wrong, axis=-1)[None]),
            "added_norm": (dims[:-1], added_norm[None]),
            "baseline_trait": (("model", "trait", "baseline", "question"), b_trait[None]),
            "baseline_coherence": (("model", "trait", "baseline", "question"), b_coh[None]),
            "baseline_text": (("model", "trait", "baseline", "question"), b_text[None]),
            "baseline_score": (("model", "trait", "baseline"), base_score[None]),
            "target_resid_norm": (("model", "layer"), np.array([[target_norm[L] for L in layers]])),
        },
        coords={"model": [loaded.model_id], "trait": names, "kind": kinds, "layer": layers, "coef": coefs,
                "question": list(range(nq)), "baseline": list(BASELINES)},
        attrs=provenance_attrs(loaded, "vectors-steer", spec.to_dict()),
    )
    ds.attrs.update(scorer=scorer.describe(), positions=spec.positions, scale=spec.scale, completed=1)
    ds["steering_score"].attrs.update(long_name="AxBench steering score: mean over questions of the harmonic "
                                                "mean of trait score and coherence")
    ds["baseline_score"].attrs.update(long_name="the same score for the unsteered baselines (prompted = the "
                                                "trait's positive instruction)")
    ds["wrong_way"].attrs.update(long_name="fraction of questions whose trait score moved against the sign of coef")
    ds["delta_trait"].attrs.update(long_name="trait score minus the clean (unsteered) answer's, per question")
    ds["added_norm"].attrs.update(long_name="L2 norm of the vector added at each step")
    return ds
