"""The options every command of this study shares (--model, --grid, --layers, ... --overwrite),
packed into one `Common` object: assembly.RunOptions, which the Python API fills from keywords."""

from __future__ import annotations

import functools
from pathlib import Path

import click

from ...commands.common import (
    DEVICE_OPTION,
    OVERWRITE_OPTION,
    PROGRESS_OPTION,
    QUIET_OPTION,
    batch_size_option,
    given_options,
)
from .assembly import RunOptions

Common = RunOptions


def experiment_options(default_layers: str, positions: str = "all"):
    """The options every experiment command shares, passed to the command as `common`."""

    def decorate(fn):
        options = [
            click.option("--model", "model_spec", default="toy", show_default=True,
                         help="'toy' (the embedded toy chat model), 'smollm2' (SmolLM2-135M-Instruct, fetched once; "
                              "see `nnsight-persona models`), a hub id, or a local model directory."),
            click.option("--grid", "grid_name", default="toy", show_default=True,
                         help="A bundled grid name (see `nnsight-persona grids`) or a YAML/JSON grid file."),
            click.option("--layers", default=default_layers, show_default=True,
                         help="'all', 'paper' (round({.25,.40,.55,.70,.85} x n_layers)), or a list like '2,4,6-8'. "
                              "Layer L = hidden_states[L]; 0 = embeddings."),
            click.option("--positions", default=positions, show_default=True,
                         help="Comma list of p_user_last, p_last, g1, g2."),
            click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default=None,
                         help="Model dtype [default: per family: Gemma-2 float32, Qwen-2 bfloat16, else float32]."),
            DEVICE_OPTION,
            click.option("--cells", default=None, help="Comma list of cell labels (persona__task); default every cell."),
            click.option("--batch-size", default="auto", show_default=True, callback=batch_size_option,
                         help="Rows per forward pass, or 'auto': as many as fit in half the free GPU memory "
                              "(on a CPU at most 32, where larger batches stop paying)."),
            click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
                         help="Output netCDF file [default: runs/<model>/<experiment>-<grid>.nc]."),
            PROGRESS_OPTION,
            QUIET_OPTION,
            click.option("--remote", is_flag=True, help="Run the traces on NDIF (API key from NDIF_API_KEY)."),
            click.option("--ndif-host", default=None,
                         help="NDIF host URL for --remote [default: the public NDIF]; 'local' runs nnsight's "
                              "local simulation of the remote path on this machine."),
            click.option("--capture", "capture_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                         default=None, help="Reuse a capture file instead of recomputing it (its model and grid are used)."),
            click.option("--fresh", is_flag=True,
                         help="Start over even if --out holds an unfinished run of the same spec (default: resume it)."),
            OVERWRITE_OPTION,
        ]

        @functools.wraps(fn)
        def packed(**kwargs):
            fields = [name for name in Common.__dataclass_fields__ if name not in ("given", "default_out")]
            quiet = kwargs.pop("quiet")
            common = Common(**{name: kwargs.pop(name) for name in fields}, given=given_options(fields),
                            default_out=True)
            common.progress = common.progress and not quiet
            return fn(common, **kwargs)

        for option in reversed(options):
            packed = option(packed)
        return packed

    return decorate
