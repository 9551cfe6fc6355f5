"""`nnsight-persona plan EXPERIMENT`: what a run would cost, before it runs (studies/xu2026/plan.py)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .common import batch_size_option, clean_errors

EXPERIMENTS = ("capture", "substitute", "markers", "inject", "knockout", "heads", "reproduce")
# Experiment options: CLI name -> (keyword of the experiment's assembly, experiments taking it).
OPTIONS = {
    "n_continuation": ("n_continuation", ("capture",)),
    "conditions": ("conditions", ("substitute", "markers", "inject", "knockout")),
    "n_eval": ("n_eval", ("substitute",)),
    "seed": ("seed", ("substitute",)),
    "patch_steps": ("patch_steps", ("markers", "inject")),
    "n_tokens": ("n_tokens", ("markers", "knockout")),
    "clamp_layers": ("clamp_layers", ("inject",)),
    "site_layers": ("site_layers", ("inject",)),
    "queries": ("queries", ("knockout", "heads")),
    "heads": ("heads", ("knockout",)),
    "top_k": ("top_k", ("heads",)),
}


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"


def format_plan(result: dict) -> str:
    lines = [f"{result['experiment']} on {result['model']} ({result['n_layers']} layers, hidden {result['hidden_size']}, "
             f"{result['dtype']}), grid {result['grid']}, {result['backend']}",
             f"config: {result['config']}; tokenizer: {result['tokenizer']}"]
    header = f"{'step':20s} {'requests':>9s} {'bytes up':>12s} {'bytes down':>12s} {'token-layer-fwd':>16s} " \
             f"{'passes':>7s} {'peak batch':>12s} {'peak memory':>12s}"
    lines.append(header)
    for row in result["steps"] + [{"step": "total", **result["total"]}]:
        lines.append(f"{row['step']:20s} {row['requests']:9d} {_size(row['bytes_up']):>12s} "
                     f"{_size(row['bytes_down']):>12s} {row['token_layer_forwards']:16,d} {row['passes']:7d} "
                     f"{str(row['peak_rows']) + ' x ' + str(row['peak_width']):>12s} "
                     f"{_size(row['peak_activation_bytes']):>12s}")
    sizes = result["batch_size_auto"]
    auto = f"--batch-size auto: {sizes['remote']} rows on a server"
    if "local" in sizes:
        auto += f", {sizes['local']} rows with {_size(sizes['device_memory_bytes'])} of device memory"
    lines.append(auto + f" (sequences of {sizes['sequence_length']} tokens)")
    return "\n".join(lines)


@click.command("plan")
@click.argument("experiment", type=click.Choice(EXPERIMENTS))
@click.option("--model", "model", required=True,
              help="A model folder or alias, a hub id (its shipped config, or its config.json where the hub is "
                   "reachable), or a config JSON file. No weights are read.")
@click.option("--tokenizer", default=None,
              help="The tokenizer for prompt lengths [default: the model folder's own, else the toy's as a stand-in].")
@click.option("--grid", default="toy", show_default=True)
@click.option("--layers", default="default", show_default=True)
@click.option("--positions", default=None, help="[default: the experiment's]")
@click.option("--cells", default=None)
@click.option("--batch-size", default="auto", show_default=True, callback=batch_size_option)
@click.option("--remote", is_flag=True, help="Plan a run on NDIF.")
@click.option("--ndif-host", default=None, help="'local': the local simulation of the remote path.")
@click.option("--dtype", default=None)
@click.option("--device-memory", default=None, help="Free device memory for --batch-size auto, e.g. 80GB or 80GiB.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the plan as JSON here.")
@click.option("--n-continuation", type=int, default=None)
@click.option("--conditions", default=None)
@click.option("--n-eval", type=int, default=None)
@click.option("--seed", type=int, default=None)
@click.option("--patch-steps", type=click.Choice(["prefill", "all"]), default=None)
@click.option("--n-tokens", type=int, default=None)
@click.option("--clamp-layers", default=None)
@click.option("--site-layers", default=None)
@click.option("--band", default=None, help="knockout: bands START:END (comma list); heads: the one band.")
@click.option("--queries", type=click.Choice(["answer", "generated"]), default=None)
@click.option("--heads", default=None)
@click.option("--top-k", default=None)
@clean_errors
def plan_command(experiment, model, tokenizer, grid, layers, positions, cells, batch_size, remote, ndif_host, dtype,
                 device_memory, json_out, band, **extra):
    """What EXPERIMENT would cost with these options, from the model's config and a tokenizer only:
    requests, bytes up and down, token-layer-forwards, the largest batch's activation memory, and
    the batch size --batch-size auto would pick (reproduce: its capture and substitute steps)."""
    from ..core.errors import SelectionError
    from ..studies.xu2026.plan import plan, plan_reproduce

    if experiment == "reproduce":
        if ndif_host not in (None, "local") and not remote:
            raise SelectionError("--ndif-host needs --remote (or use --ndif-host local)")
        result = plan_reproduce(model, grid, tokenizer=tokenizer, batch_size=batch_size,
                                remote="local" if ndif_host == "local" else remote, dtype=dtype,
                                device_memory=device_memory)
    else:
        options = {}
        for name, value in extra.items():
            if value is None:
                continue
            keyword, takers = OPTIONS[name]
            if experiment not in takers:
                raise SelectionError(f"--{name.replace('_', '-')} is not an option of {experiment}; "
                                     f"it is one of {', '.join(takers)}")
            options[keyword] = value
        if band is not None:
            if experiment not in ("knockout", "heads"):
                raise SelectionError(f"--band is not an option of {experiment}; it is one of knockout, heads")
            options["bands" if experiment == "knockout" else "band"] = band
        result = plan(experiment, model, tokenizer=tokenizer, grid=grid, layers=layers, positions=positions,
                      cells=cells, batch_size=batch_size, remote=remote, ndif_host=ndif_host, dtype=dtype,
                      device_memory=device_memory, **options)
    click.echo(format_plan(result))
    if json_out is not None:
        json_out.write_text(json.dumps(result, indent=1) + "\n")


COMMANDS = (plan_command,)
