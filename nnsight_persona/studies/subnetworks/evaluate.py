"""`subnetwork eval`: masks evaluated with NO persona prompt, against the baselines.

Every variant of the model is scored on every persona of the set:
- `unpruned`: the model as it is, no persona prompt;
- `prompt:P`: the model as it is, with persona P's prompt (the set's prompt_template);
- `mask:P@s`: persona P's mask at sparsity s (from the mask file), no prompt;
- `random@s#i`: a uniformly random mask of the same shape and sparsity (seed i), no prompt.
The opposite persona's mask is `mask:Q@s` scored on persona P.

Measures, all answer-only, none with a persona prompt unless the variant is `prompt:P`:
- alignment: over P's evaluation items (question, A, B), the fraction where the log-likelihood of
  the matching answer's tokens (summed, given the chat prompt asking the question) beats the other
  answer's; `margin` its mean log-likelihood difference in nats, `p_matching` the mean of
  sigmoid(margin) (the matching answer's share of the two answers' probability);
  `item_margin` keeps each item's margin (dims variant x item, the item's persona in `item_persona`),
  so the figures can draw intervals over items;
- marker_rate: the fraction of greedy generations (every evaluation question of the set, n_tokens
  each) holding at least one of P's markers (scoring.py rules);
- perplexity: exp of the mean negative log-likelihood of the neutral answers' tokens;
- evidence (core.evidence, with `evidence` on, the default): each greedy generation scored for
  each persona P, teacher-forced on the UNEDITED model (no mask), with P's prompt (the set's
  prompt_template) against no prompt (the question alone): nats/token, positive where P's prompt
  explains the answer better. Beside it `evidence_sum`, `answer_length`, `coherence`,
  `evidence_coherent`; `mean_evidence` per (variant, persona); and the calibration of each
  persona: `evidence_auroc` (the prompt:P answers against the unpruned ones) and
  `evidence_threshold` (the 0.95 quantile of the unpruned answers' evidence, the null), with
  `evidence_rate` the fraction of each variant's answers above it (beside marker_rate).

Weight masks run on a copy of the weights (apply.MaskedCopy), here only; channel masks (the
structured variant) run as activation edits on the caller's model, here or remotely.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass

import numpy as np
import torch

from ...core.batching import chunked, left_pad
from ...core.prompts import render_prompt
from ...core.scoring import contains_marker
from ...core.sites import module_at
from ...core.tracing import greedy_config, retried
from .apply import MaskedCopy, channel_factors, mask_channels
from .data import PersonaSet
from .masks import random_mask
from .norms import encode

EXPERIMENT = "subnetwork-eval"


@dataclass(frozen=True)
class EvalSpec:
    persona_set: str
    masks_sha256: str  # of the mask file: other masks are another computation
    mask_spec: str  # the find spec the masks were made with (JSON)
    random_seeds: int = 3
    n_tokens: int = 32
    batch_size: int = 16
    prompt_baseline: bool = True
    data_sha256: str = ""
    evidence: bool = True  # score the generations by core.evidence (persona prompt against no prompt)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Variant:
    label: str
    kind: str  # unpruned | prompt | mask | random
    mask_persona: str = ""
    prompt_persona: str = ""
    sparsity: float = float("nan")
    seed: int = -1


def file_digest(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def eval_digest(pset: PersonaSet) -> str:
    items = {n: [dataclasses.asdict(x) for x in p.evaluation] + [p.text, list(p.markers)] for n, p in pset.personas.items()}
    items["neutral"] = [list(x) for x in pset.neutral]
    items["template"] = pset.prompt_template
    return hashlib.sha256(json.dumps(items, sort_keys=True).encode()).hexdigest()[:16]


def variants(pset: PersonaSet, masks: dict, spec: EvalSpec) -> list[Variant]:
    out = [Variant("unpruned", "unpruned")]
    if spec.prompt_baseline:
        out += [Variant(f"prompt:{p}", "prompt", prompt_persona=p) for p in pset.personas]
    sparsities = sorted({s for _, s in masks})
    for persona, sparsity in sorted(masks):
        out.append(Variant(f"mask:{persona}@{sparsity:g}", "mask", mask_persona=persona, sparsity=sparsity))
    for sparsity in sparsities:
        out += [Variant(f"random@{sparsity:g}#{i}", "random", sparsity=sparsity, seed=i) for i in range(spec.random_seeds)]
    return out


def masks_of(variant: Variant, masks: dict) -> dict | None:
    if variant.kind == "mask":
        return masks[(variant.mask_persona, variant.sparsity)]
    if variant.kind == "random":
        template = next(iter(masks.values()))
        return {n: random_mask(m.shape, variant.sparsity, variant.seed, n) for n, m in template.items()}
    return None


# --- trace bodies ------------------------------------------------------------------------------

@retried
def _answer_logprobs(loaded, batch, cols, targets, weights, channels) -> torch.Tensor:
    rows = torch.arange(batch.input_ids.shape[0])[:, None]
    with loaded.lm.trace(**batch.inputs(), remote=loaded.remote):
        mask_channels(loaded.lm, channels)
        logits = loaded.lm.output.logits  # the model's own logits (after any final soft-capping)
        logp = logits[rows, cols].float().log_softmax(-1)
        picked = logp.gather(-1, targets.to(logp.device)[..., None]).squeeze(-1)
        total = (picked * weights.to(picked.device)).sum(-1).save()
    return total.cpu()


def answer_logprobs(loaded, seqs, channels=None, batch_size: int = 16) -> np.ndarray:
    """Summed log-probability of each sequence's answer tokens given what precedes them."""
    out = []
    for rng in chunked(len(seqs), batch_size):
        chunk = [seqs[i] for i in rng]
        batch = left_pad([s.ids for s in chunk], loaded.pad_id)
        width = max(len(s.ids) - s.answer_start for s in chunk)
        cols = torch.zeros(len(chunk), width, dtype=torch.long)
        targets = torch.zeros_like(cols)
        weights = torch.zeros(len(chunk), width)
        for r, s in enumerate(chunk):
            n = len(s.ids) - s.answer_start
            pad = int(batch.pad[r])
            cols[r, :n] = torch.arange(pad + s.answer_start - 1, pad + len(s.ids) - 1)
            targets[r, :n] = torch.tensor(s.ids[s.answer_start:])
            weights[r, :n] = 1.0
        out.append(_answer_logprobs(loaded, batch, cols, targets, weights, channels))
    return torch.cat(out).double().numpy()


@retried
def _generate(loaded, batch, n_tokens: int, channels) -> torch.Tensor:
    inputs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
    lm_head = module_at(loaded.lm, loaded.adapter.lm_head)
    with loaded.lm.generate(**inputs, generation_config=greedy_config(loaded, n_tokens), remote=loaded.remote) as tracer:
        tokens = list().save()
        for _ in tracer.iter[0:n_tokens]:
            mask_channels(loaded.lm, channels)
            tokens.append(lm_head.output[:, -1].argmax(-1))
    return torch.stack(tokens, dim=1).cpu()


def generations(loaded, user_texts: list[str], n_tokens: int, channels=None, batch_size: int = 16) -> list[str]:
    """Greedy answers (raw argmax at every step, cut at the first end of turn) to each user text."""
    return [loaded.tokenizer.decode(a, skip_special_tokens=True)
            for a in generation_ids(loaded, user_texts, n_tokens, channels, batch_size)]


def generation_ids(loaded, user_texts: list[str], n_tokens: int, channels=None, batch_size: int = 16) -> list[list[int]]:
    """The token ids of `generations` (cut at the first end of turn)."""
    from ...core.evidence import answer_ids

    out = []
    for rng in chunked(len(user_texts), batch_size):
        prompts = [render_prompt(loaded.tokenizer, user_texts[i]).ids for i in rng]
        ids = _generate(loaded, left_pad(prompts, loaded.pad_id), n_tokens, channels)
        out += [answer_ids(row.tolist(), loaded.eos_ids) for row in ids]
    return out


def persona_evidence(unedited, pset: PersonaSet, questions: list[str], answers: list[list[int]],
                     batch_size: int = 16) -> dict:
    """core.evidence of each answer (to questions[i]) for each persona: its prompt against none,
    on `unedited` (the model without any mask). Arrays [persona, generation]."""
    from ...core import evidence as core_evidence

    tok = unedited.tokenizer
    bare = [render_prompt(tok, q).ids for q in questions]
    out = {}
    for p in pset.personas:
        got = core_evidence.score_answers(unedited, [render_prompt(tok, pset.prompted(p, q)).ids for q in questions],
                                          bare, answers, batch_size=batch_size)
        for name, values in got.as_dict().items():
            out.setdefault(name, []).append(values)
    return {name: np.array(values) for name, values in out.items()}


def in_forward_order(loaded, masks: dict) -> dict:
    """`masks` with each mask dict in the order the model runs its modules (a mask file lists them
    alphabetically; nnsight must reach modules in forward order). Unknown modules are refused."""
    from ...core.errors import SelectionError
    from .norms import linear_names

    order = {n: i for i, n in enumerate(linear_names(loaded.lm._module, loaded.adapter, head=True))}
    for by_module in masks.values():
        unknown = [n for n in by_module if n not in order]
        if unknown:
            raise SelectionError(f"the masks name modules this model does not have as nn.Linear: {unknown[:3]}")
    return {k: dict(sorted(v.items(), key=lambda kv: order[kv[0]])) for k, v in masks.items()}


# --- the run -----------------------------------------------------------------------------------

def generation_questions(pset: PersonaSet) -> list[str]:
    return list(dict.fromkeys(it.question for p in pset.personas.values() for it in p.evaluation))


def score_variant(loaded, pset: PersonaSet, variant: Variant, channels, spec: EvalSpec, unedited=None) -> dict:
    tok = loaded.tokenizer
    ask = (lambda q: pset.prompted(variant.prompt_persona, q)) if variant.prompt_persona else (lambda q: q)
    personas = list(pset.personas)
    seqs, owners = [], []
    for p in personas:
        for it in pset.persona(p).evaluation:
            seqs += [encode(tok, ask(it.question), it.matching), encode(tok, ask(it.question), it.other)]
            owners.append(p)
    logp = answer_logprobs(loaded, seqs, channels, spec.batch_size)
    margins = logp[0::2] - logp[1::2]
    owners = np.array(owners)
    questions = generation_questions(pset)
    ids = generation_ids(loaded, [ask(q) for q in questions], spec.n_tokens, channels, spec.batch_size)
    texts = [tok.decode(a, skip_special_tokens=True) for a in ids]
    neutral = [encode(tok, ask(q), a) for q, a in pset.neutral]
    n_tokens = sum(len(s.ids) - s.answer_start for s in neutral)
    nll = -answer_logprobs(loaded, neutral, channels, spec.batch_size).sum() / n_tokens
    return {
        "alignment": [float((margins[owners == p] > 0).mean()) for p in personas],
        "margin": [float(margins[owners == p].mean()) for p in personas],
        "p_matching": [float((1 / (1 + np.exp(-margins[owners == p]))).mean()) for p in personas],
        "item_margin": margins.astype(float),  # per item: the intervals over items of the figures
        "marker_rate": [float(np.mean([contains_marker(t, pset.persona(p).markers) for t in texts])) for p in personas],
        "perplexity": float(math.exp(nll)),
        "text": texts,
        "evidence": persona_evidence(unedited if unedited is not None else loaded, pset, questions, ids,
                                     spec.batch_size) if spec.evidence else None,
    }


def run(loaded, pset: PersonaSet, spec: EvalSpec, masks: dict, progress: bool = True):
    """The evaluation Dataset (dims variant x persona, and generation for the texts)."""
    from ...core.progress import tqdm

    structured = bool(json.loads(spec.mask_spec).get("structured"))
    masks = in_forward_order(loaded, masks)
    copy = None if structured else MaskedCopy(loaded)
    rows = []
    todo = variants(pset, masks, spec)
    for variant in tqdm(todo, desc="subnetwork eval", disable=not progress):
        chosen = masks_of(variant, masks)
        if structured:
            target, channels = loaded, (channel_factors(chosen) if chosen else None)
        else:
            target, channels = copy.with_masks(chosen), None
        rows.append(score_variant(target, pset, variant, channels, spec, unedited=loaded))
    return _dataset(loaded, pset, spec, todo, rows, structured)


def _dataset(loaded, pset, spec, todo, rows, structured):
    import xarray as xr

    from ...storage.provenance import provenance_attrs

    personas = list(pset.personas)
    questions = generation_questions(pset)
    pv = lambda key: np.array([r[key] for r in rows])
    unit = {"units": "1"}
    ds = xr.Dataset(
        {
            "alignment": (("variant", "persona"), pv("alignment"),
                          {"long_name": "A/B items where the matching answer is likelier", **unit}),
            "margin": (("variant", "persona"), pv("margin"),
                       {"long_name": "log p(matching) - log p(other), answer tokens", "units": "nats"}),
            "p_matching": (("variant", "persona"), pv("p_matching"),
                           {"long_name": "matching answer's share of the two answers' probability", **unit}),
            "marker_rate": (("variant", "persona"), pv("marker_rate"),
                            {"long_name": "greedy generations with a persona marker", **unit}),
            "perplexity": (("variant",), pv("perplexity"), {"long_name": "perplexity on neutral answers"}),
            "text": (("variant", "generation"), np.array([r["text"] for r in rows], dtype=object)),
            "item_margin": (("variant", "item"), pv("item_margin"),
                            {"long_name": "log p(matching) - log p(other) of each evaluation item", "units": "nats"}),
        },
        coords={
            "variant": [v.label for v in todo], "persona": personas, "generation": np.arange(len(questions)),
            "question": ("generation", np.array(questions, dtype=object)),
            "kind": ("variant", [v.kind for v in todo]),
            "mask_persona": ("variant", [v.mask_persona for v in todo]),
            "prompt_persona": ("variant", [v.prompt_persona for v in todo]),
            "sparsity": ("variant", [v.sparsity for v in todo]),
            "seed": ("variant", [v.seed for v in todo]),
            "item_persona": ("item", [p for p in personas for _ in pset.persona(p).evaluation]),
        },
    )
    if spec.evidence:
        _add_evidence(ds, rows)
    ds.attrs.update(provenance_attrs(loaded, EXPERIMENT, spec.to_dict()))
    ds.attrs["mask_variant"] = "structured (input channels, activation edits)" if structured else "weights (masked copy)"
    ds.attrs["persona_set"] = pset.name
    ds.attrs["completed"] = 1
    return ds


NULL_QUANTILE = 0.95


def _add_evidence(ds, rows) -> None:
    """The evidence variables over (variant, persona, generation), their means, and each persona's
    calibration: prompt:P against unpruned (AUROC) and the unpruned answers' 0.95 quantile (null)."""
    from ...core import evidence as core_evidence
    from ...analysis.calibration import auroc, threshold

    stack = {name: np.stack([r["evidence"][name] for r in rows]) for name in core_evidence.VARIABLES}
    per_answer = ("answer_length", "coherence")  # the same for every persona: kept once per generation
    for name, values in stack.items():
        if name in per_answer:
            ds[name] = (("variant", "generation"), values[:, 0])
        else:
            ds[name] = (("variant", "persona", "generation"), values)
        ds[name].attrs.update(core_evidence.ATTRS[name], prompt_pair="the persona's prompt against no prompt, "
                                                                      "unedited model")
    evidence = stack["evidence"]
    with np.errstate(invalid="ignore"):
        ds["mean_evidence"] = (("variant", "persona"), np.nanmean(evidence, axis=-1),
                               {"long_name": "mean evidence of the variant's generations", "units": "nats/token"})
    labels = ds.variant.values.tolist()
    personas = ds.persona.values.tolist()
    base = labels.index("unpruned")
    aurocs, nulls, rates = [], [], np.full(evidence.shape[:2], np.nan)
    for k, p in enumerate(personas):
        null = evidence[base, k][np.isfinite(evidence[base, k])]
        prompted = f"prompt:{p}"
        aurocs.append(auroc(evidence[labels.index(prompted), k], null) if prompted in labels else float("nan"))
        nulls.append(threshold(null, NULL_QUANTILE))
        with np.errstate(invalid="ignore"):
            rates[:, k] = np.mean(evidence[:, k] > nulls[-1], axis=-1)
    ds["evidence_auroc"] = (("persona",), np.array(aurocs), {
        "long_name": "AUROC of evidence: the prompt:P generations against the unpruned ones"})
    ds["evidence_threshold"] = (("persona",), np.array(nulls), {
        "long_name": f"the {NULL_QUANTILE:g} quantile of the unpruned generations' evidence (the null)",
        "units": "nats/token"})
    ds["evidence_rate"] = (("variant", "persona"), rates, {
        "long_name": "generations whose evidence exceeds the persona's null threshold", "units": "1"})
