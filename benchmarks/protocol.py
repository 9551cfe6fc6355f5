"""The short-grid protocol (capture + decomposition + substitution) computed several ways.

- ``ours``: the package, batched;
- ``ours_unbatched``: the package with batch size 1;
- ``reference``: a plain transformers loop with forward hooks as the reference implementation runs
  it: for every (cell, position, layer), one forward pass per condition (BB, XB, BY, XY) to read the
  residual with a hook, then one patched pass;
- ``reference_shared_capture``: a stronger plain loop that reads every layer and position of a
  condition in one pass (4 capture passes per cell), then one patched pass per (position, layer).
Each returns the summed KL array [layer, position, cell] of the additive substitution and counts of
forward passes, token-forwards (rows x width of every pass) and token-layer-forwards (rows x width
of every decoder block that ran; a block ours skips below a patch's layer does not count).

`layers`: "paper" (the fractional grid) or "all" (0 .. n_layers - 1: the embeddings and every
block's input; the reference patches with a pre-hook on block L, so the last block's output, which
no block reads, is left out).
"""

from __future__ import annotations

import time

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


class BlockCounter:
    """Token positions each decoder block processes, summed over blocks (its MLP's input: a block
    skipped through nnsight returns its replacement without running its MLP)."""

    def __init__(self, model):
        self.token_layers = 0
        self.handles = [block.mlp.register_forward_hook(self._count) for block in model.model.layers]

    def _count(self, module, args, output):
        self.token_layers += int(args[0].shape[0] * args[0].shape[1])

    def close(self):
        for handle in self.handles:
            handle.remove()


def sweep_layers(n_layers: int, layers: str) -> list[int]:
    from nnsight_persona.core.selection import paper_layers

    if layers == "paper":
        return paper_layers(n_layers)
    if layers == "all":
        return list(range(n_layers))
    raise ValueError(f"layers must be 'paper' or 'all', not {layers!r}")


def run_ours(model_dir: str, grid_name: str, batch_size: int, layers: str = "paper", skip_layers: bool = True):
    """`model_dir`: a model folder or one of the package's aliases."""
    from nnsight_persona.analysis.decompose import decompose
    from nnsight_persona.studies.xu2026 import capture, substitute
    from nnsight_persona.core.grids import load_grid
    from nnsight_persona.models.loading import load_model

    start = time.perf_counter()
    loaded = load_model(model_dir, dtype="float32")
    load_s = time.perf_counter() - start
    grid = load_grid(grid_name)
    layers = tuple(sweep_layers(loaded.n_layers, layers))
    counter, blocks = ForwardCounter(loaded.lm._module), BlockCounter(loaded.lm._module)
    cap = capture.run(loaded, grid, capture.CaptureSpec(grid=grid_name, layers=layers, batch_size=batch_size), progress=False)
    decompose(cap)
    spec = substitute.SubstituteSpec(grid=grid_name, layers=layers, conditions=(CONDITION,), batch_size=batch_size,
                                     skip_layers=skip_layers)
    ds = substitute.run(loaded, grid, spec, capture_ds=cap, progress=False)
    counter.close()
    blocks.close()
    kl = torch.from_numpy(ds.kl.isel(model=0).sel(condition=CONDITION).values)
    return kl, counter.passes, counter.tokens, blocks.token_layers, load_s


@torch.no_grad()
def run_reference(model_dir: str, grid_name: str, shared_capture: bool = False, layers: str = "paper"):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from nnsight_persona.core.grids import CONDITIONS, load_grid
    from nnsight_persona.core.prompts import POSITIONS, render_prompt

    start = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="eager", dtype=torch.float32).eval()
    model.to("cuda" if torch.cuda.is_available() else "cpu")  # where ours goes too (load_model's 'auto')
    load_s = time.perf_counter() - start
    ids = lambda seq: torch.tensor([seq], device=model.device)
    grid = load_grid(grid_name)
    layers = sweep_layers(model.config.num_hidden_layers, layers)
    blocks = model.model.layers
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    counter, block_counter = ForwardCounter(model), BlockCounter(model)
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
                start = max(probe, len(xy) - 1)  # the paper scores probes in the prompt from p_last on
                ref = clean_logp[start : start + 10]
                kl[li, pi, ci] = float((ref.exp() * (ref - logp[start : start + 10])).sum())
    counter.close()
    block_counter.close()
    return kl, counter.passes, counter.tokens, block_counter.token_layers, load_s


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


def necessary_work(model_dir: str, grid_name: str, layers: str = "paper") -> dict:
    """The floor of the substitution sweep, two ways. Token-forwards: every patch recomputes only
    the positions from its probe to the end of the evaluation window (each prompt's prefix KV cache
    computed once), plus one clean pass per cell. Token-layer-forwards: the same, with each patch's
    suffix run only through the blocks at and above its layer (a patch at layer L changes nothing
    below L), and the clean pass through every block."""
    from transformers import AutoConfig, AutoTokenizer

    from nnsight_persona.core.grids import load_grid
    from nnsight_persona.core.prompts import POSITIONS, render_prompt

    tok = AutoTokenizer.from_pretrained(model_dir)
    n_layers = AutoConfig.from_pretrained(model_dir).num_hidden_layers
    grid = load_grid(grid_name)
    chosen = sweep_layers(n_layers, layers)
    tokens = token_layers = 0
    for cell in grid.cells:
        p = render_prompt(tok, grid.user_text(cell, "XY"), grid.persona_text(cell, "XY"))
        end = len(p.ids) + 11  # the teacher-forced sequence: prompt + 11 continuation tokens
        tokens += end  # the clean pass, once
        token_layers += end * n_layers
        for pos in POSITIONS:
            suffix = end - p.position(pos)
            tokens += len(chosen) * suffix
            token_layers += sum(suffix * (n_layers - L) for L in chosen)
    return {"token_forwards": tokens, "token_layer_forwards": token_layers}
