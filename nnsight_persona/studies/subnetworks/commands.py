"""`nnsight-persona subnetwork find|eval`: persona subnetworks (arXiv:2602.07164), docs/subnetworks.md.

Thin commands: the run is assembled by assembly.py (options -> spec, the shared output policy:
reuse a finished result, refuse another one unless --overwrite; api.py calls the same functions);
here the files are written (commands.common.write_result), figures and tables printed.
"""

from __future__ import annotations

from pathlib import Path

import click

from ...commands.common import (
    DEVICE_OPTION,
    OVERWRITE_OPTION,
    batch_size_option,
    clean_errors,
    progress_options,
    write_result,
)


def _stack():
    """An ExitStack closed when the command ends (the output lock is held until then)."""
    from contextlib import ExitStack

    return click.get_current_context().with_resource(ExitStack())


@click.group("subnetwork")
def subnetwork():
    """Persona subnetworks: masks found from calibration activations, evaluated without a prompt."""


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
    from .assembly import find_run

    made = find_run(_stack(), model_spec=model_spec, set_name=set_name, personas=personas, method=method,
                    activation=activation, tau=tau, sparsity=sparsity, mlp_only=mlp_only, head=head,
                    structured=structured, seed=seed, tokens=tokens, dtype=dtype, device=device,
                    batch_size=batch_size, out=out, mask_file=mask_file, progress=progress, overwrite=overwrite,
                    default_output=True)
    if not made.wrote_masks:
        return  # the finished statistics and their masks are there
    click.echo(f"wrote {made.mask_file}")
    write_result(made.ds, made.target)
    from ...analysis.subnetworks import find_rows

    click.echo(find_rows(made.ds))


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
    from .assembly import eval_run

    ds, target = eval_run(_stack(), masks, model_spec=model_spec, set_name=set_name, random_seeds=random_seeds,
                          n_tokens=n_tokens, no_prompt_baseline=no_prompt_baseline, dtype=dtype, device=device,
                          batch_size=batch_size, out=out, remote=remote, ndif_host=ndif_host, progress=progress,
                          overwrite=overwrite, default_output=True)
    write_result(ds, target)
    out = target.path
    from ...analysis.subnetworks import eval_rows
    from ...plots import figures_for, save_figure

    for name, fig in figures_for(ds).items():
        for fig_path in save_figure(fig, out.with_name(f"{out.stem}-{name}")):
            click.echo(f"wrote {fig_path}")
    click.echo(eval_rows(ds))
    if "mean_evidence" in ds:
        click.echo("\nmean evidence (the persona's prompt against none, nats/token):")
        click.echo(eval_rows(ds, "mean_evidence"))


COMMANDS = (subnetwork,)
