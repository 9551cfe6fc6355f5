"""`nnsight-persona subnetwork find|eval`: persona subnetworks (arXiv:2602.07164), docs/subnetworks.md.

Thin commands: options -> spec, the experiment's run(), files written through the shared output
policy (cli_common.claim_output / write_result: reuse a finished result, refuse another one
unless --overwrite).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from .cli_common import (DEVICE_OPTION, OVERWRITE_OPTION, batch_size_option, claim_output, clean_errors,
                         progress_options, write_result)
from .errors import SelectionError


@click.group("subnetwork")
def subnetwork():
    """Persona subnetworks: masks found from calibration activations, evaluated without a prompt."""


def _floats(text: str, what: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise SelectionError(f"{what} {text!r} is not a comma list of numbers") from None


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


@subnetwork.command("find")
@click.option("--model", "model_spec", default="toy", show_default=True, help="'toy', 'smollm2', a hub id or a folder.")
@click.option("--set", "set_name", default="toy", show_default=True,
              help="A persona set: a bundled name (experiments/subnetworks/NAME.yaml: toy, smollm2) or a YAML file.")
@click.option("--persona", "personas", default=None, help="Comma list of the set's personas [default: all].")
@click.option("--method", type=click.Choice(["wanda", "contrastive"]), default="contrastive", show_default=True)
@click.option("--activation", type=click.Choice(["relu", "softplus"]), default="relu", show_default=True,
              help="Contrastive factor: relu(z) or softplus(z / tau).")
@click.option("--tau", default=2.0, show_default=True, type=float, help="Softplus temperature.")
@click.option("--sparsity", default="0.3", show_default=True, help="Comma list of sparsities in [0, 1).")
@click.option("--mlp-only", is_flag=True, help="Mask only the MLP linears.")
@click.option("--head/--no-head", default=False, show_default=True, help="Also mask the LM head (never the embeddings).")
@click.option("--structured", is_flag=True, help="Whole input channels (activation edits; runs remotely) instead of weights.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the tie-breaking order.")
@click.option("--tokens", type=click.Choice(["answer", "all"]), default="answer", show_default=True,
              help="Tokens whose activations the channel norms count.")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default=None)
@DEVICE_OPTION
@click.option("--batch-size", default="16", show_default=True, callback=batch_size_option)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Statistics netCDF [default: runs/<model>/subnetwork-find-<set>.nc]; masks go next to it "
                   "as <stem>-masks.safetensors.")
@click.option("--masks", "mask_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where the masks go [default: next to --out, <stem>-masks.safetensors].")
@progress_options
@OVERWRITE_OPTION
@clean_errors
def find_command(model_spec, set_name, personas, method, activation, tau, sparsity, mlp_only, head, structured, seed,
                 tokens, dtype, device, batch_size, out, mask_file, progress, overwrite):
    """Each persona's mask from its calibration items; statistics (kept fraction, overlap, Jaccard)."""
    from .cli_common import default_out
    from .experiments.subnetworks import data, find
    from .experiments.subnetworks.masks import save_masks
    from .preflight import ModelPlan

    pset = data.load_persona_set(set_name)
    spec = find.FindSpec(
        persona_set=pset.name, personas=tuple(p.strip() for p in personas.split(",")) if personas else (),
        method=method, activation=activation, tau=tau, sparsities=_floats(sparsity, "--sparsity"), mlp_only=mlp_only,
        head=head, structured=structured, seed=seed, tokens=tokens, batch_size=_batch(batch_size),
        data_sha256=find.data_digest(pset))
    find.check_spec(spec, pset)
    plan = ModelPlan(model_spec, dtype=dtype, device=device)
    out = out or default_out(model_spec, "subnetwork-find", pset.name)
    target = claim_output(out, find.EXPERIMENT, spec.to_dict(), plan.model_id, plan.dtype, lambda: plan.revision,
                          overwrite=overwrite)
    mask_file = mask_file or masks_path(out)
    mask_file.parent.mkdir(parents=True, exist_ok=True)
    if target.done and mask_file.exists():
        return
    loaded = plan.load()
    masks, ds = find.run(loaded, pset, spec, progress=progress)
    tmp = mask_file.with_name(f".{mask_file.name}.{os.getpid()}.partial")
    save_masks(masks, tmp, {**spec.to_dict(), "model_id": loaded.model_id, "model_revision": loaded.revision,
                            "dtype": loaded.dtype})
    os.replace(tmp, mask_file)
    click.echo(f"wrote {mask_file}")
    if target.done:
        target.state = "replace"  # the masks were missing: the statistics are written again with them
    write_result(ds, target)
    from .analysis.subnetworks import find_rows

    click.echo(find_rows(ds))


@subnetwork.command("eval")
@click.argument("masks", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--model", "model_spec", default=None, help="The model [default: the one the masks were found on].")
@click.option("--set", "set_name", default=None, help="Persona set [default: the masks' own].")
@click.option("--random-seeds", default=3, show_default=True, type=click.IntRange(min=0),
              help="Random masks of each sparsity (seeds 0..N-1).")
@click.option("--n-tokens", default=32, show_default=True, type=click.IntRange(min=1), help="Greedy tokens generated.")
@click.option("--no-prompt-baseline", is_flag=True, help="Skip the unpruned-with-persona-prompt variants.")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default=None)
@DEVICE_OPTION
@click.option("--batch-size", default="16", show_default=True, callback=batch_size_option)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Evaluation netCDF [default: next to the masks, subnetwork-find-X-masks.safetensors -> subnetwork-eval-X.nc]; figures next to it.")
@click.option("--remote", is_flag=True, help="Run on NDIF (structured masks only: a weight mask cannot travel).")
@click.option("--ndif-host", default=None, help="NDIF host URL; 'local' runs nnsight's local simulation of the remote path.")
@progress_options
@OVERWRITE_OPTION
@clean_errors
def eval_command(masks, model_spec, set_name, random_seeds, n_tokens, no_prompt_baseline, dtype, device, batch_size,
                 out, remote, ndif_host, progress, overwrite):
    """Evaluate masks with NO persona prompt: A/B alignment, markers, perplexity, against the baselines."""
    from .experiments.subnetworks import data, evaluate
    from .experiments.subnetworks.masks import load_masks
    from .preflight import ModelPlan

    found, mask_spec = load_masks(masks)
    structured = bool(mask_spec.get("structured"))
    target_remote = "local" if ndif_host == "local" else (ndif_host or True) if remote else False
    if ndif_host and ndif_host != "local" and not remote:
        raise SelectionError("--ndif-host needs --remote (or use --ndif-host local)")
    if target_remote and not structured:
        raise SelectionError(f"{masks} holds weight masks, which cannot travel to a remote server; find structured "
                             "(channel) masks with `subnetwork find --structured` to run remotely")
    pset = data.load_persona_set(set_name or mask_spec["persona_set"])
    plan = ModelPlan(model_spec or mask_spec["model_id"], dtype=dtype or mask_spec.get("dtype"), remote=target_remote,
                     device=device)
    if target_remote in (False, "local") and mask_spec.get("model_revision") not in (None, plan.revision):
        raise SelectionError(f"{masks} was found on other weights of {mask_spec.get('model_id')!r} "
                             f"(fingerprint {mask_spec.get('model_revision')}, now {plan.revision})")
    spec = evaluate.EvalSpec(persona_set=pset.name, masks_sha256=evaluate.file_digest(masks),
                             mask_spec=json.dumps(mask_spec, sort_keys=True), random_seeds=random_seeds,
                             n_tokens=n_tokens, batch_size=_batch(batch_size), prompt_baseline=not no_prompt_baseline,
                             data_sha256=evaluate.eval_digest(pset))
    out = out or default_eval_out(masks)
    target = claim_output(out, evaluate.EXPERIMENT, spec.to_dict(), plan.model_id, plan.dtype,
                          lambda: plan.revision, overwrite=overwrite)
    ds = target.existing if target.done else evaluate.run(plan.load(), pset, spec, found, progress=progress)
    if not target.done:
        loaded = plan.load()
        ds.attrs["backend"] = {False: "local", "local": "local simulation of the remote path"}.get(
            loaded.remote, "NDIF")
    write_result(ds, target)
    from .analysis.subnetworks import eval_rows
    from .plots import figures_for, save_figure

    for name, fig in figures_for(ds).items():
        for fig_path in save_figure(fig, out.with_name(f"{out.stem}-{name}")):
            click.echo(f"wrote {fig_path}")
    click.echo(eval_rows(ds))
