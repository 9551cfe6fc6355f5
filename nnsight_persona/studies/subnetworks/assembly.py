"""The persona-subnetwork runs assembled (find, eval): options -> persona set, model, spec, then
the output policy of ../run_setup.py (claim, reuse, refuse) and the run itself.

Both the `subnetwork ...` commands (commands.py) and the Python API (api.py:
subnetwork_find, subnetwork_eval) call these functions, so a command and its function make the
same Dataset. Nothing here parses a command line or prints tables.

Layering: below commands and api, above this study's run modules. Heavy imports happen inside functions.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..run_setup import claim_output, default_out, model_name, model_plan, numbers
from ...core.errors import SelectionError


def _floats(text, what: str) -> tuple[float, ...]:
    return tuple(numbers(text, what))


def _batch(value) -> int:
    return 16 if value == "auto" else int(value)


def masks_path(out: Path) -> Path:
    """The mask file written next to find's statistics file."""
    return out.with_name(f"{out.stem}-masks.safetensors")


def default_eval_out(mask_file: Path) -> Path:
    """subnetwork-find-X-masks.safetensors -> subnetwork-eval-X.nc, next to it."""
    stem = mask_file.stem.removesuffix("-masks")
    stem = stem.replace("subnetwork-find", "subnetwork-eval", 1) if "subnetwork-find" in stem else f"{stem}-eval"
    return mask_file.with_name(f"{stem}.nc")


@dataclass
class Found:
    """What `subnetwork find` made: the statistics, their output (None without one), the mask
    file (None when not written) and whether this run wrote it."""

    ds: object
    target: object
    mask_file: Path | None
    wrote_masks: bool


def find_run(stack, model_spec="toy", set_name="toy", personas=None, method="contrastive", activation="relu",
             tau: float = 2.0, sparsity="0.3", mlp_only: bool = False, head: bool = False, structured: bool = False,
             seed: int = 0, tokens: str = "answer", dtype=None, device="auto", batch_size=16, out=None,
             mask_file=None, progress: bool = True, overwrite: bool = False, default_output: bool = False) -> Found:
    """`subnetwork find`. The statistics go to `out` (the commands: runs/<model>/subnetwork-find-<set>.nc
    when `default_output`), the masks to `mask_file` (default: next to `out`). A finished result
    whose masks are there is reused (nothing computed); its masks missing, both are made again.
    Without `out` and `mask_file` nothing is written."""
    from . import data, find
    from .masks import save_masks

    pset = data.load_persona_set(set_name)
    spec = find.FindSpec(
        persona_set=pset.name, personas=tuple(p.strip() for p in personas.split(",")) if personas else (),
        method=method, activation=activation, tau=tau, sparsities=_floats(sparsity, "--sparsity"), mlp_only=mlp_only,
        head=head, structured=structured, seed=seed, tokens=tokens, batch_size=_batch(batch_size),
        data_sha256=find.data_digest(pset))
    find.check_spec(spec, pset)
    plan = model_plan(model_spec, dtype=dtype, device=device)
    out = out or (default_out(model_name(model_spec), "subnetwork-find", pset.name) if default_output else None)
    target = None
    if out is not None:
        out = Path(out)
        target = claim_output(out, find.EXPERIMENT, spec.to_dict(), plan.model_id, plan.dtype, lambda: plan.revision,
                              stack, overwrite=overwrite)
    mask_file = Path(mask_file) if mask_file else (masks_path(out) if out is not None else None)
    if mask_file is not None:
        mask_file.parent.mkdir(parents=True, exist_ok=True)
    if target is not None and target.done and mask_file.exists():
        return Found(target.existing, target, mask_file, False)
    loaded = plan.load()
    masks, ds = find.run(loaded, pset, spec, progress=progress)
    if mask_file is not None:
        tmp = mask_file.with_name(f".{mask_file.name}.{os.getpid()}.partial")
        save_masks(masks, tmp, {**spec.to_dict(), "model_id": loaded.model_id, "model_revision": loaded.revision,
                                "dtype": loaded.dtype})
        os.replace(tmp, mask_file)
    if target is not None and target.done:
        target.state = "replace"  # the masks were missing: the statistics are written again with them
    return Found(ds, target, mask_file, mask_file is not None)


def eval_run(stack, masks, model_spec=None, set_name=None, random_seeds: int = 3, n_tokens: int = 32,
             no_prompt_baseline: bool = False, dtype=None, device="auto", batch_size=16, out=None,
             remote: bool = False, ndif_host=None, progress: bool = True, overwrite: bool = False,
             default_output: bool = False):
    """`subnetwork eval` of a mask file: (dataset, target); the output is `out` (the commands:
    next to the masks when `default_output`), target None without one. `model_spec`: a name or
    an already loaded model [default: the model the masks were found on]."""
    from . import data, evaluate
    from .masks import load_masks

    masks = Path(masks)
    found, mask_spec = load_masks(masks)
    structured = bool(mask_spec.get("structured"))
    target_remote = "local" if ndif_host == "local" else (ndif_host or True) if remote else False
    if ndif_host and ndif_host != "local" and not remote:
        raise SelectionError("--ndif-host needs --remote (or use --ndif-host local)")
    loaded_given = model_spec is not None and not isinstance(model_spec, (str, Path))
    if loaded_given:  # an already loaded model runs where it was loaded to run
        plan = model_plan(model_spec, dtype=dtype)
        target_remote = plan.remote
    if target_remote and not structured:
        raise SelectionError(f"{masks} holds weight masks, which cannot travel to a remote server; find structured "
                             "(channel) masks with `subnetwork find --structured` to run remotely")
    pset = data.load_persona_set(set_name or mask_spec["persona_set"])
    if not loaded_given:
        plan = model_plan(model_spec or mask_spec["model_id"], dtype=dtype or mask_spec.get("dtype"),
                          remote=target_remote, device=device)
    if target_remote in (False, "local") and mask_spec.get("model_revision") not in (None, plan.revision):
        raise SelectionError(f"{masks} was found on other weights of {mask_spec.get('model_id')!r} "
                             f"(fingerprint {mask_spec.get('model_revision')}, now {plan.revision})")
    spec = evaluate.EvalSpec(persona_set=pset.name, masks_sha256=evaluate.file_digest(masks),
                             mask_spec=json.dumps(mask_spec, sort_keys=True), random_seeds=random_seeds,
                             n_tokens=n_tokens, batch_size=_batch(batch_size), prompt_baseline=not no_prompt_baseline,
                             data_sha256=evaluate.eval_digest(pset))
    out = out or (default_eval_out(masks) if default_output else None)
    target = None
    if out is not None:
        target = claim_output(Path(out), evaluate.EXPERIMENT, spec.to_dict(), plan.model_id, plan.dtype,
                              lambda: plan.revision, stack, overwrite=overwrite)
        if target.done:
            return target.existing, target
    ds = evaluate.run(plan.load(), pset, spec, found, progress=progress)
    loaded = plan.load()
    ds.attrs["backend"] = {False: "local", "local": "local simulation of the remote path"}.get(loaded.remote, "NDIF")
    return ds, target
