"""The short-grid protocol (capture + decomposition + substitution) computed several ways.

- ``ours``: the package, batched;
- ``ours_unbatched``: the package with batch size 1;
- ``reference``: a plain transformers loop with forward hooks as the reference implementation runs
  it: for every (cell, position, layer), one forward pass per condition (BB, XB, BY, XY) to read the
  residual with a hook, then one patched pass;
- ``reference_shared_capture``: a stronger plain loop that reads every layer and position of a
  condition in one pass (4 capture passes per cell), then one patched pass per (position, layer).
Each returns the summed KL array [layer, position, cell] of the additive substitution and counts of
forward passes and token-forwards (rows x width of every pass).
"""

from __future__ import annotations

import torch

CONDITION = "additive"


class ForwardCounter:
    """Counts forward passes of a transformers model and the token positions they process."""

    def __init__(self, model):
        self.passes = 0
        self.tokens = 0
        self.handle = model.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            ids = kwargs["inputs_embeds"]
        self.passes += 1
        self.tokens += int(ids.shape[0] * ids.shape[1])

    def close(self):
        self.handle.remove()


def run_ours(model_dir: str, grid_name: str, batch_size: int):
    """`model_dir`: a model folder or one of the package's aliases."""
    from nnsight_persona.analysis.decompose import decompose
    from nnsight_persona.experiments import capture, substitute
    from nnsight_persona.grids import load_grid
    from nnsight_persona.models import load_model
    from nnsight_persona.selection import paper_layers

    loaded = load_model(model_dir, dtype="float32")
    grid = load_grid(grid_name)
    layers = tuple(paper_layers(loaded.n_layers))
    counter = ForwardCounter(loaded.lm._module)
    cap = capture.run(loaded, grid, capture.CaptureSpec(grid=grid_name, layers=layers, batch_size=batch_size), progress=False)
    decompose(cap)
    spec = substitute.SubstituteSpec(grid=grid_name, layers=layers, conditions=(CONDITION,), batch_size=batch_size)
    ds = substitute.run(loaded, grid, spec, capture_ds=cap, progress=False)
    counter.close()
    kl = torch.from_numpy(ds.kl.isel(model=0).sel(condition=CONDITION).values)
    return kl, counter.passes, counter.tokens


@torch.no_grad()
def run_reference(model_dir: str, grid_name: str, shared_capture: bool = False):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from nnsight_persona.grids import CONDITIONS, load_grid
    from nnsight_persona.prompts import POSITIONS, render_prompt
    from nnsight_persona.selection import paper_layers

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="eager", dtype=torch.float32).eval()
    model.to("cuda" if torch.cuda.is_available() else "cpu")  # where ours goes too (load_model's 'auto')
    ids = lambda seq: torch.tensor([seq], device=model.device)
    grid = load_grid(grid_name)
    layers = paper_layers(model.config.num_hidden_layers)
    blocks = model.model.layers
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    counter = ForwardCounter(model)
    kl = torch.zeros(len(layers), len(POSITIONS), len(grid.cells), dtype=torch.float64)
    for ci, cell in enumerate(grid.cells):
        prompts = {c: render_prompt(tok, grid.user_text(cell, c), grid.persona_text(cell, c)) for c in CONDITIONS}
        xy = list(prompts["XY"].ids)
        out = model.generate(ids(xy), max_new_tokens=12, min_new_tokens=12, do_sample=False, pad_token_id=pad)
        clean = out[0, len(xy):].tolist()
        h = {}
        if shared_capture:
            for c, p in prompts.items():
                states = model(ids(list(p.ids) + clean[:2]), output_hidden_states=True).hidden_states
                h[c] = {(L, pos): states[L][0, p.position(pos)] for L in layers for pos in POSITIONS}
        else:
            for c, p in prompts.items():
                h[c] = {(L, pos): _read_one(model, list(p.ids) + clean[:2], L, p.position(pos))
                        for L in layers for pos in POSITIONS}
        seq = xy + clean[:11]
        clean_logp = model(ids(seq)).logits[0].float().log_softmax(-1)
        for li, L in enumerate(layers):
            for pi, pos in enumerate(POSITIONS):
                vec = h["BB"][(L, pos)] + (h["XB"][(L, pos)] - h["BB"][(L, pos)]) + (h["BY"][(L, pos)] - h["BB"][(L, pos)])
                probe = prompts["XY"].position(pos)

                def pre_hook(module, args, kwargs, vec=vec, probe=probe):
                    hs = (args[0] if args else kwargs["hidden_states"]).clone()
                    hs[0, probe] = vec
                    if args:
                        return (hs,) + tuple(args[1:]), kwargs
                    return args, {**kwargs, "hidden_states": hs}

                handle = blocks[L].register_forward_pre_hook(pre_hook, with_kwargs=True)
                try:
                    logp = model(ids(seq)).logits[0].float().log_softmax(-1)
                finally:
                    handle.remove()
                ref = clean_logp[probe : probe + 10]
                kl[li, pi, ci] = float((ref.exp() * (ref - logp[probe : probe + 10])).sum())
    counter.close()
    return kl, counter.passes, counter.tokens


def _read_one(model, ids, layer, pos):
    """One forward pass reading the residual entering block `layer` at `pos` with a pre-hook."""
    seen = {}

    def grab(module, args, kwargs):
        seen["h"] = (args[0] if args else kwargs["hidden_states"])[0, pos].clone()

    handle = model.model.layers[layer].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        model(torch.tensor([ids], device=model.device))
    finally:
        handle.remove()
    return seen["h"]


def necessary_token_forwards(model_dir: str, grid_name: str) -> int:
    """The floor of the substitution sweep: every patch recomputes only the positions from its
    probe to the end of the evaluation window (the prefix KV cache computed once per prompt)."""
    from transformers import AutoConfig, AutoTokenizer

    from nnsight_persona.grids import load_grid
    from nnsight_persona.prompts import POSITIONS, render_prompt
    from nnsight_persona.selection import paper_layers

    tok = AutoTokenizer.from_pretrained(model_dir)
    n_layers = AutoConfig.from_pretrained(model_dir).num_hidden_layers
    grid = load_grid(grid_name)
    total = 0
    for cell in grid.cells:
        p = render_prompt(tok, grid.user_text(cell, "XY"), grid.persona_text(cell, "XY"))
        end = len(p.ids) + 11  # the teacher-forced sequence: prompt + 11 continuation tokens
        total += len(p.ids) + 11  # the clean pass, once
        for pos in POSITIONS:
            total += len(paper_layers(n_layers)) * (end - p.position(pos))
    return total
