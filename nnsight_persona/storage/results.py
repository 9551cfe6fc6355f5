"""Result files of one experiment, several models, as one Dataset along `model`.

`open_results(["artifacts/toy/substitute-toy.nc", "runs/gemma/substitute-toy.nc"])` checks that the
files are compatible (one experiment, one grid, the same cells, positions and layers) and
concatenates them along `model`. Each file's provenance becomes a coordinate along `model`
(n_layers, model_revision, dtype, git_commit, package_version, created, completed, backend,
source_file); attrs keep what all files share, `completed` is 1 only if every file finished.

Models of different depths hold different layer indices. They are refused unless
`align="depth"`: then `layer` becomes the dimension `layer_frac` (depth as a fraction of the
model's layers) and `layer` a coordinate (model, layer_frac) with each model's own layer. Two
layer lists map when every one is the paper's fractional grid round(f x n_layers) of its model
(f in 0.25, 0.40, 0.55, 0.70, 0.85: `layer_frac` is f), or when every layer of the shallowest
model, at depth L / n, has a layer round(L / n x N) in each deeper one (whose other layers are
then left out).
"""

from __future__ import annotations

import glob
import json
from pathlib import Path

import numpy as np
import xarray as xr

from ..core.errors import SelectionError
from .store import load_dataset, spec_of

# Provenance attrs that differ per file: kept as coordinates along `model`.
PER_MODEL = ("n_layers", "model_revision", "model_family", "dtype", "git_commit", "package_version", "created",
             "completed", "backend", "source_file", "stopped_by")
# Dimensions indexed by depth in blocks rather than by `layer`; files of different depths do not map there.
DEPTH_DIMS = ("band", "block", "layer_set", "site_layer")


def result_paths(paths_or_glob) -> list[Path]:
    """Files named by a path, a glob pattern, or a list of either, in the order given (each
    pattern sorted), without repeats."""
    items = [paths_or_glob] if isinstance(paths_or_glob, (str, Path)) else list(paths_or_glob)
    found: list[Path] = []
    for item in items:
        text = str(item)
        matches = sorted(glob.glob(text)) if glob.has_magic(text) else [text]
        if not matches:
            raise SelectionError(f"no result file matches {text!r}")
        found.extend(Path(m) for m in matches)
    if not found:
        raise SelectionError("open_results needs at least one result file")
    return list(dict.fromkeys(found))


def open_results(paths_or_glob, align: str | None = None, cells=None) -> xr.Dataset:
    """The result files of one experiment, concatenated along `model` (see the module docstring).
    `align`: None (layers must be the same) or 'depth' (align layers by depth fraction).
    `cells`: these cells of every file (for files that hold different subsets of one grid)."""
    if align not in (None, "depth"):
        raise SelectionError(f"align={align!r}; allowed: None (the same layers) or 'depth'")
    paths = result_paths(paths_or_glob)
    datasets = [_per_model(load_dataset(p), p) for p in paths]
    if cells is not None:
        datasets = [_cells(ds, list(cells), p) for ds, p in zip(datasets, paths)]
    return concat_models(datasets, [str(p) for p in paths], align=align)


def _cells(ds: xr.Dataset, cells: list, path) -> xr.Dataset:
    missing = [c for c in cells if c not in set(ds["cell"].values.tolist())]
    if missing:
        raise SelectionError(f"{path} has no cell {missing}; it holds {ds['cell'].values.tolist()}")
    return ds.sel(cell=cells)


def _per_model(ds: xr.Dataset, path) -> xr.Dataset:
    """`ds` with its provenance attrs as coordinates along `model` (a file already collected keeps its own)."""
    if "model" not in ds.dims:
        ds = ds.expand_dims(model=[ds.attrs.get("model_id", Path(path).stem)])
    n = ds.sizes["model"]
    for name in PER_MODEL:
        if name in ds.coords:
            continue
        value = str(path) if name == "source_file" else ds.attrs.get(name)
        if value is None:
            value = "" if name != "completed" else 1
        ds = ds.assign_coords({name: ("model", [value] * n)})
    return ds


def _short(layers) -> str:
    """A layer list for a message: ranges of consecutive layers written START-END."""
    parts, run = [], []
    for L in layers:
        if run and L != run[-1] + 1:
            parts.append(run)
            run = []
        run.append(L)
    parts += [run] if run else []
    return "[" + ",".join(f"{r[0]}-{r[-1]}" if len(r) > 2 else ",".join(map(str, r)) for r in parts) + "]"


def concat_models(datasets: list[xr.Dataset], names: list[str], align: str | None = None) -> xr.Dataset:
    """Check the datasets (each with provenance coordinates along `model`) fit together, then
    concatenate them along `model`."""
    first, name0 = datasets[0], names[0]
    experiment = first.attrs.get("experiment")
    for ds, name in zip(datasets[1:], names[1:]):
        if ds.attrs.get("experiment") != experiment:
            raise SelectionError(f"{name} holds a {ds.attrs.get('experiment')} result, {name0} a {experiment} one; "
                                 "open_results concatenates files of one experiment")
    grids = {name: spec_of(ds).get("grid") for ds, name in zip(datasets, names)}
    if len(set(grids.values())) > 1:
        raise SelectionError(f"the files are of different grids ({', '.join(f'{n}: {g}' for n, g in grids.items())}); "
                             "models are compared on one grid")
    models = [str(m) for ds in datasets for m in ds["model"].values]
    repeated = sorted({m for m in models if models.count(m) > 1})
    if repeated:
        raise SelectionError(f"model {repeated[0]!r} is in more than one of {names}; give one file per model")
    for dim in ("cell", "position", "condition"):
        _same_values(datasets, names, dim)
    depths = {int(n) for ds in datasets for n in ds["n_layers"].values if str(n) != ""}
    if len(depths) > 1:
        depth_dims = [d for d in DEPTH_DIMS if d in first.dims]
        if depth_dims:
            raise SelectionError(f"{experiment} results index {depth_dims[0]}s of decoder blocks, and the models have "
                                 f"{sorted(depths)} layers: they do not map onto one another")
    if "layer" in first.dims:
        datasets = _aligned(datasets, names, align, len(depths) > 1)
    out = xr.concat(datasets, dim="model", combine_attrs="drop_conflicts", join="outer", data_vars="all",
                    coords="different", compat="equals")
    out.attrs = _shared_attrs(datasets)
    for variable in out.variables.values():  # a string width read from the first file would cut longer names
        if variable.dtype.kind in "USO":
            variable.encoding.pop("dtype", None)
    return out


def _same_values(datasets, names, dim) -> None:
    if dim not in datasets[0].dims:
        return
    want = [str(v) for v in datasets[0][dim].values]
    for ds, name in zip(datasets[1:], names[1:]):
        got = [str(v) for v in ds[dim].values] if dim in ds.dims else []
        if got != want:
            raise SelectionError(f"{name} has {dim}s {got[:6]}{'...' if len(got) > 6 else ''}, {names[0]} has "
                                 f"{want[:6]}{'...' if len(want) > 6 else ''}; select the same {dim}s in every file")


def _aligned(datasets, names, align, depths_differ: bool) -> list[xr.Dataset]:
    layers = [[int(L) for L in ds["layer"].values] for ds in datasets]
    if align is None:
        if depths_differ or any(L != layers[0] for L in layers[1:]):
            n = [int(ds["n_layers"].values[0]) for ds in datasets]
            listed = "; ".join(f"{name}: layers {_short(L)} of {k}" for name, L, k in zip(names, layers, n))
            raise SelectionError(f"the files' layers do not match ({listed}); open_results(..., align='depth') "
                                 "aligns them by depth fraction (coordinate layer_frac)")
        return datasets
    n_layers = [int(ds["n_layers"].values[0]) for ds in datasets]
    paper = _paper_fractions(layers, n_layers)
    if paper is not None:
        chosen, fractions = layers, paper
    else:
        chosen, fractions = _nearest_depths(layers, n_layers, names)
    out = []
    for ds, own, fracs in zip(datasets, chosen, fractions):
        ds = ds.sel(layer=own)
        ds = ds.assign_coords(layer_frac=("layer", np.asarray(fracs, dtype=float)))
        ds = ds.swap_dims(layer="layer_frac").drop_vars("layer")
        ds = ds.assign_coords(layer=(("model", "layer_frac"), np.tile(own, (ds.sizes["model"], 1))))
        ds["layer_frac"].attrs = {"long_name": "depth (fraction of the model's layers)", "units": "1"}
        out.append(ds)
    return out


def _paper_fractions(layers, n_layers):
    """Each file's layers as the paper's fractions f (round(f x n) = layer), when every file's
    layers are exactly its model's paper grid; else None."""
    from ..core.selection import PAPER_LAYER_FRACTIONS, paper_layers

    clip = lambda v, n: min(max(round(v), 1), n - 1)
    result = []
    for L, n in zip(layers, n_layers):
        if sorted(L) != paper_layers(n) or len(L) != len(PAPER_LAYER_FRACTIONS):
            return None
        by_layer = {clip(f * n, n): f for f in PAPER_LAYER_FRACTIONS}
        result.append([by_layer[x] for x in L])
    return result


def _nearest_depths(layers, n_layers, names):
    """The depths L / n of the shallowest model's layers; each other model at its layers
    round(L / n x N), which it must hold (its other layers are left out). Returns (each model's
    layers, the depths)."""
    ref = int(np.argmin(n_layers))
    fracs = [L / n_layers[ref] for L in layers[ref]]
    chosen = []
    for L, n, name in zip(layers, n_layers, names):
        wanted = [int(round(f * n)) for f in fracs]
        missing = [w for w in wanted if w not in L]
        if missing or len(set(wanted)) != len(wanted):
            raise SelectionError(
                f"layers of {name} ({_short(L)} of {n}) do not map onto those of {names[ref]} ({_short(layers[ref])} of "
                f"{n_layers[ref]}) by depth: it would need layers {wanted}; run both on the paper's grid "
                "(--layers paper) or on every layer (--layers all)")
        chosen.append(wanted)
    return chosen, [fracs] * len(layers)


def _shared_attrs(datasets) -> dict:
    """attrs every file shares (per-file provenance is on the `model` coordinates), a spec made of
    the fields every spec shares, and completed = 1 only if every file finished."""
    attrs = {k: v for k, v in datasets[0].attrs.items()
             if k not in PER_MODEL and k != "spec" and all(_same(d.attrs.get(k), v) for d in datasets[1:])}
    specs = [spec_of(d) for d in datasets]
    attrs["spec"] = json.dumps({k: v for k, v in specs[0].items() if all(s.get(k) == v for s in specs[1:])},
                               sort_keys=True)
    attrs["completed"] = int(all(int(c) for d in datasets for c in d["completed"].values))
    attrs["models"] = json.dumps([str(m) for d in datasets for m in d["model"].values])
    return attrs


def _same(a, b) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.array_equal(a, b)
    return a == b


def own_layers(ds: xr.Dataset) -> xr.Dataset:
    """One model of a depth-aligned dataset back on its own `layer` dimension (a dataset without
    `layer_frac` as it is). Needs a single model (select one first)."""
    if "layer_frac" not in ds.dims:
        return ds
    layer = ds["layer"]
    if "model" in layer.dims:
        if ds.sizes["model"] != 1:
            raise SelectionError("own_layers needs one model; select it first (ds.sel(model=[name]))")
        layer = layer.isel(model=0, drop=True)
    ds = ds.drop_vars("layer").assign_coords(layer=("layer_frac", layer.values.astype(int)))
    return ds.swap_dims(layer_frac="layer")


def n_layers_of(ds: xr.Dataset, model: str | None = None) -> int:
    """The depth of `model` in `ds` (its coordinate along `model`, or attrs for a single file)."""
    if "n_layers" in ds.coords and "model" in ds["n_layers"].dims:
        values = ds["n_layers"].sel(model=model).values if model is not None else ds["n_layers"].values
        return int(np.ravel(values)[0])
    return int(ds.attrs["n_layers"])


def provenance(ds: xr.Dataset) -> list[dict]:
    """One row per model: model, the per-model provenance and the dataset's spec fields."""
    rows = []
    for i, model in enumerate(str(m) for m in ds["model"].values) if "model" in ds.dims else [(0, ds.attrs.get("model_id"))]:
        row = {"model": model}
        for name in PER_MODEL:
            if name in ds.coords and "model" in ds[name].dims:
                value = ds[name].values[i]
            else:
                value = ds.attrs.get(name)
            row[name] = value.item() if hasattr(value, "item") else value
        rows.append(row)
    return rows
