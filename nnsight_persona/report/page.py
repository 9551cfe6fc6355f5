"""The report of a results folder: DIR/index.html, one self-contained page (figures embedded as
data URIs, so it can be mailed) with, per result file, its figures, the tables the commands print
(compare's medians beside the paper's where the paper reports the experiment, else the command's
own medians), its provenance, and a short "what this shows" built from the dataset's attrs.

Tables come from the analysis functions the commands use (analysis.compare, analysis.additivity,
analysis.summary, the experiments' summary functions); nothing is recomputed here. The page
depends only on the files: the same folder gives the same bytes (MANIFEST.json hashes it).
"""

from __future__ import annotations

import base64
import io
import json
import math
from pathlib import Path

from ..core.errors import PersonaError

NAME = "index.html"
ORDER = ("capture", "decompose", "substitute", "markers", "inject", "knockout", "heads", "vectors-extract",
         "vectors-steer", "vectors-monitor", "vectors-trace", "vectors-vs-edit", "vectors-vs-delta", "subnetwork-find",
         "subnetwork-eval")
DEFAULT_PAPER = "gemma2b"  # the paper model a model the paper does not report is set beside


def write_report(folder, paper: str = DEFAULT_PAPER, out=None, progress: bool = False) -> Path:
    """Write folder/index.html (or `out`) for every result file in `folder`; returns its path.
    `progress`: a progress bar over the files."""
    from ..core.progress import tqdm

    folder = Path(folder)
    if not folder.is_dir():
        raise PersonaError(f"no results folder {str(folder)!r}")
    files = sorted(folder.glob("*.nc"), key=_order)
    if not files:
        raise PersonaError(f"{folder} holds no result files (*.nc); run an experiment or `reproduce` first")
    path = Path(out) if out is not None else folder / NAME
    owned = png_owners(folder, files)
    sections = [section(p, paper, owned.get(p.name, [])) for p in tqdm(files, desc="report", disable=not progress)]
    orphans = [_png_figure(png, "") for png in owned.get(None, [])]
    page = render(folder.name, sections, folder_claims(folder), orphans)
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return path


def _order(path: Path):
    """Experiments in pipeline order, then file names; reads the attrs only."""
    import xarray as xr

    from ..core.errors import ResultFileError

    try:
        with xr.open_dataset(path, engine="netcdf4") as ds:
            experiment = ds.attrs.get("experiment", "")
    except (OSError, ValueError) as exc:
        raise ResultFileError(f"cannot read {path} as a result file ({exc})") from None
    return (ORDER.index(experiment) if experiment in ORDER else len(ORDER), path.name)


def png_owners(folder: Path, files: list[Path]) -> dict:
    """Every PNG of the folder under the result file whose name (without .nc) is the longest prefix of
    the PNG's name followed by "-" (substitute-toy-long-controls.png: substitute-toy-long.nc, not
    substitute-toy.nc); PNGs of no result file (e.g. a vectors-trace figure) under None."""
    stems = sorted((f.stem for f in files), key=len, reverse=True)
    owned: dict = {}
    for png in sorted(folder.glob("*.png")):
        owner = next((st for st in stems if png.stem == st or png.stem.startswith(st + "-")), None)
        owned.setdefault(None if owner is None else owner + ".nc", []).append(png)
    return owned


def folder_claims(folder: Path) -> dict:
    """The folder's findings (analysis/findings.py): one row per file and claim, and every claim."""
    from ..analysis.findings import findings_digest, findings_rows, folder_findings

    claims = folder_findings(folder)
    return {"digest": _table("findings: claims that hold, per file", findings_digest(claims), "findings"),
            "all": _table("every claim", findings_rows(claims), "claims")}


CAPTIONS = {
    "kl_by_layer": "Look at the additive line against the controls: additivity holds where it stays below all of them "
                   "(bands: 95% bootstrap intervals of the median over cells).",
    "controls": "Each condition's KL per layer: the additive bar should be the shortest after oracle.",
    "decomposition": "cos(Delta_XY, Delta_X + Delta_Y) near 1 and a small interaction mean persona and task add up.",
    "markers": "Compare the bars of remove_persona and bare: a persona kept after its removal shows as a taller bar.",
    "evidence": "The further a condition's curve bows from the diagonal, the better its answers are told from bare ones.",
    "gap_closed": "How much of the host-to-persona gap each injected residual closes, per layer set.",
    "knockout_by_band": "The persona line above the control spans marks the bands where the persona is read.",
    "head_map": "Bright heads are those whose knockout alone moves the answer; the right panel gives the top heads' "
                "effect with 95% bootstrap intervals over cells.",
    "alignment_vs_sparsity": "The own mask above the random masks at the same sparsity is the subnetwork claim (bars: "
                             "95% intervals over items or generations; band: over random seeds).",
    "persona_by_mask": "Each mask's persona score: the own mask should favour its persona, random masks neither.",
    "elicitation": "Cosines between the vectors of the elicitation styles: high values mean the styles agree; below, "
                   "how strongly each style elicits the trait (95% intervals over pairs).",
    "steering": "The trait score as the coefficient grows: the persona vector should rise above its random and "
                "shuffled controls.",
    "cos_matrix": "Cosines between the vectors of different checkpoints or layers.",
    "cos_to_final": "How close each checkpoint's vector is to the final one.",
}


def caption(name: str) -> str:
    for key in sorted(CAPTIONS, key=len, reverse=True):
        if name == key or name.startswith(key + "-") or name.endswith("-" + key) or name.endswith(key):
            return CAPTIONS[key]
    return "A figure of this result file."


def _png_figure(png: Path, stem: str) -> dict:
    name = png.stem[len(stem) + 1:] if stem and png.stem != stem else png.stem
    return {"name": name, "file": png.name, "caption": caption(name), "alt": f"figure {png.name}",
            "src": "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode("ascii")}


def section(path: Path, paper: str = DEFAULT_PAPER, pngs=()) -> dict:
    """What the page shows of one result file; `pngs`: the folder's PNGs of this file (png_owners),
    embedded where the experiment's figure registry does not draw them."""
    from ..storage.results import provenance
    from ..storage.store import load_dataset, spec_of

    ds = load_dataset(path)
    spec = spec_of(ds)
    experiment = ds.attrs.get("experiment", "?")
    rows = provenance(ds)
    incomplete = [r["model"] for r in rows if not int(r.get("completed") or 0)] or (
        [] if int(ds.attrs.get("completed", 1)) else ["?"])
    return {
        "id": path.stem,
        "file": path.name,
        "experiment": experiment,
        "grid": spec.get("grid", ""),
        "incomplete": incomplete,
        "provenance": [_provenance_row(r, spec) for r in rows],
        "spec": json.dumps({k: v for k, v in spec.items() if k != "grid_definition"}, sort_keys=True, indent=1),
        "shows": what_this_shows(ds),
        "tables": tables(ds, paper),
        "figures": _with_files(figures(ds, path), pngs, path),
    }


def _with_files(drawn: list[dict], pngs, path: Path) -> list[dict]:
    """The registry's figures (with captions) and every other PNG of the file, in name order."""
    names = {f"{path.stem}-{f['name']}.png" for f in drawn}
    out = [{**f, "file": f"{path.stem}-{f['name']}.png", "caption": caption(f["name"])} for f in drawn]
    return out + [_png_figure(png, path.stem) for png in pngs if png.name not in names]


def _provenance_row(row: dict, spec: dict) -> dict:
    backend = str(row.get("backend") or "local")
    return {
        "model": row["model"], "grid": spec.get("grid", ""), "n_layers": row.get("n_layers"), "dtype": row.get("dtype"),
        "git_commit": row.get("git_commit") or "unknown", "package_version": row.get("package_version") or "?",
        "created": row.get("created") or "?", "where": "local" if backend == "local" else f"remote ({backend})",
        "completed": bool(int(row.get("completed") or 0)),
        "stopped_by": row.get("stopped_by") or "",
    }


# --- tables -------------------------------------------------------------------------------------


def _table(title: str, rows: list[dict], kind: str, note: str = "") -> dict:
    columns = list(dict.fromkeys(k for r in rows for k in r))
    return {"title": title, "kind": kind, "note": note, "columns": columns,
            "rows": [[_cell(r.get(c)) for c in columns] for r in rows]}


def _cell(value) -> dict:
    """A table cell: the text shown and, for numbers, the full value (data-value) for checks."""
    if isinstance(value, bool) or value is None:
        return {"text": "" if value is None else ("yes" if value else "no"), "value": None}
    if isinstance(value, (int, float)) or hasattr(value, "dtype"):
        number = float(value)
        if hasattr(value, "dtype") and "int" in str(value.dtype) or isinstance(value, int):
            return {"text": str(int(number)), "value": repr(int(number))}
        from ..analysis.tables import number as shown

        return {"text": shown(number, 4), "value": "nan" if math.isnan(number) else repr(number)}
    return {"text": str(value), "value": None}


def paper_rows(ds, paper: str = DEFAULT_PAPER):
    """compare's rows for `ds` (the paper's own models on their own numbers, any other beside
    `paper`) and which paper model they are beside; ([], reason) where the paper has none."""
    from ..analysis.compare import compare

    try:
        return compare(ds), None
    except PersonaError:
        pass
    try:
        return compare(ds, paper=paper), paper
    except PersonaError as exc:
        return [], str(exc)


def tables(ds, paper: str = DEFAULT_PAPER) -> list[dict]:
    """The tables the commands print for this dataset: compare's (with the side-by-side table for
    several models), and each experiment's own medians."""
    from ..analysis.compare import side_by_side

    experiment = ds.attrs.get("experiment")
    out = []
    if experiment in ("decompose", "substitute", "markers", "inject"):
        rows, beside = paper_rows(ds, paper)
        if rows:
            note = f"models the paper does not report are set beside its {beside} (layers matched by depth)" if beside else ""
            out.append(_table("compare: our medians over cells beside the paper's", rows, "compare", note))
            if len({r["model"] for r in rows}) > 1:
                out.append(_table("every model beside the paper's", side_by_side(rows), "side_by_side"))
        else:
            out.append({"title": "compare", "kind": "none", "note": f"no paper numbers: {beside}", "columns": [],
                        "rows": []})
    for title, rows, kind in own_tables(ds):
        out.append(_table(title, rows, kind))
    return out


def own_tables(ds) -> list[tuple[str, list[dict], str]]:
    """(title, rows, kind) of the tables an experiment's command prints, for each model."""
    from ..analysis.additivity import additivity_rows
    from ..analysis.summary import condition_medians, median_rows

    experiment = ds.attrs.get("experiment")
    models = [str(m) for m in ds["model"].values] if "model" in ds.dims else [None]
    if experiment == "substitute":
        return [("additive against its controls (median KL over cells with 95% intervals; ratio = median paired ratio "
                 "control / additive against the control beaten by the least, with its interval)",
                 additivity_rows(ds), "additivity")]
    if experiment == "decompose":
        return [("median over cells per layer and position", median_rows(_own(ds, m), ["cos_xy_sum", "cos_x_y",
                                                                                       "inter_over_xy"]), "medians")
                for m in models]
    out = []
    for i, model in enumerate(models):
        one = _own(ds, model)
        label = f" ({model})" if len(models) > 1 else ""
        if experiment == "inject":
            out.append((f"median summed KL to the persona run, per layer set{label}",
                        condition_medians(one, ("layer_set",)), "medians"))
        elif experiment == "markers":
            from ..studies.xu2026.markers import summary_table

            out.append((f"persona markers per condition{label}",
                        [{"condition": c, "cells with a marker": f"{k}/{n}", "mean distinct": d}
                         for c, k, n, d in summary_table(one)], "medians"))
        elif experiment == "knockout":
            from ..studies.xu2026.knockout import summary_rows

            for title, variable in (("median summed KL", "kl"), ("median persona shift", "persona_shift"),
                                    ("fraction of cells with any persona marker", "any_marker")):
                if variable in one:
                    out.append((f"{title}, per band and condition{label}", summary_rows(one, variable), "medians"))
        elif experiment == "heads":
            from ..studies.xu2026.heads import summary_rows

            top, groups = summary_rows(one)
            out += [(f"top heads{label}", top, "medians"), (f"groups of the top heads{label}", groups, "medians")]
    return out


def _own(ds, model):
    from ..plots import one_model

    return one_model(ds, model) if model is not None else ds


# --- what this shows ----------------------------------------------------------------------------

WHAT = {
    "capture": "Residuals h at layers {layers} and positions {positions} for the four prompts of each cell "
               "(BB bare, XB persona only, BY task only, XY persona and task).",
    "decompose": "The 2x2 decomposition of the capture: Delta_X (persona), Delta_Y (task), Delta_XY and the "
                 "interaction. cos(Delta_XY, Delta_X + Delta_Y) near 1 and a small |Inter| / |Delta_XY| mean "
                 "persona and task effects add up in the residual stream at that layer and position.",
    "substitute": "The clean XY residual replaced at layers {layers} and positions {positions} by h_BB + Delta_X + "
                  "Delta_Y (additive) and its controls ({conditions}); KL(clean || patched) summed over {n_eval} "
                  "teacher-forced tokens. Additivity is claimed only where the additive KL beats the best control.",
    "markers": "Greedy continuations ({n_tokens} tokens) under {conditions} with the residual edited at layer "
               "{layer}, position {position}: how many cells show a persona marker.",
    "inject": "A host prompt without the persona text gets h_XY or the cached additive residual written at "
              "p_last over the layer sets {layer_sets}: can a cached residual replace the persona text? "
              "KL to the persona run, conditions {conditions}.",
    "knockout": "Attention from the answer to the persona tokens removed in the blocks of each band {bands}, with "
                "size-matched controls ({conditions}); KL to the clean run and the persona-specific shift.",
    "heads": "The knockout of band {band}, one head at a time, then the top heads together ({top_k}); heads "
             "ranked by {rank_by}.",
}


def what_this_shows(ds) -> list[str]:
    """Sentences about the dataset, from its attrs and spec: what was run, on what, and the
    verdict lines the commands print (substitute's additivity)."""
    from ..storage.results import provenance
    from ..storage.store import spec_of

    spec = spec_of(ds)
    experiment = ds.attrs.get("experiment", "?")
    fields = {k: _bands(v) if k in ("band", "bands") else _listed(v) for k, v in spec.items() if k != "grid_definition"}
    if "conditions" in fields and experiment == "substitute":
        fields["conditions"] = _listed([c for c in spec["conditions"] if c != "additive"])
    fields.setdefault("layers", _listed([int(v) for v in ds["layer"].values.ravel()]) if "layer" in ds.coords else "")
    text = WHAT.get(experiment, "A {experiment} result.")
    try:
        first = text.format(experiment=experiment, **fields)
    except (KeyError, IndexError):
        first = text.split(":")[0] + "."
    models = ", ".join(f"{r['model']} ({r['n_layers']} layers, {r['dtype']})" for r in provenance(ds))
    cells = ds.sizes.get("cell")
    lines = [f"{models} on grid {spec.get('grid', '?')}" + (f", {cells} cells." if cells else "."), first]
    if experiment == "substitute" and "condition" in ds.dims:
        from ..analysis.additivity import additivity_rows, verdict_text

        try:
            lines += verdict_text(additivity_rows(ds)).splitlines()
        except PersonaError:
            pass
    lines += findings(ds)
    if not int(ds.attrs.get("completed", 1)):
        lines.append(f"This run did not finish ({ds.attrs.get('stopped_by', 'interrupted')}): cells it never "
                     "reached are missing (NaN) and every median is over the cells done.")
    return lines


def findings(ds) -> list[str]:
    """A sentence per model on where the dataset's main measure is largest or smallest, from the
    summaries the tables show."""
    from ..analysis.summary import summarize
    from ..storage.store import spec_of

    experiment = ds.attrs.get("experiment")
    models = [str(m) for m in ds["model"].values] if "model" in ds.dims else [None]
    lines = []
    for model in models:
        one = _own(ds, model)
        one = one.isel(model=0) if "model" in one.dims else one
        who = f"{model}: " if model else ""
        if experiment == "decompose" and "cos_xy_sum" in one:
            position = "p_last" if "p_last" in one.position.values else str(one.position.values[0])
            med = summarize(one["cos_xy_sum"].sel(position=position))["median"]
            inner = med.sel(layer=[L for L in med.layer.values if L > 0]) if med.sizes["layer"] > 1 else med
            lo, hi = int(inner.idxmin().item()), int(inner.idxmax().item())
            lines.append(f"{who}at {position}, the median cos(Delta_XY, Delta_X + Delta_Y) over layers >= 1 runs from "
                         f"{float(inner.sel(layer=lo)):.3f} (layer {lo}) to {float(inner.sel(layer=hi)):.3f} (layer {hi}).")
        elif experiment == "markers" and "any_marker" in one:
            from ..studies.xu2026.markers import summary_table

            rates = ", ".join(f"{c} {k}/{n}" for c, k, n, _ in summary_table(one.expand_dims(model=[model or "?"])))
            lines.append(f"{who}cells with any persona marker: {rates}.")
        elif experiment == "knockout" and "persona_shift" in one and "band" in one.dims:
            from ..studies.xu2026.heads import best_band

            try:
                start, end = best_band(one, "persona_shift")
                lines.append(f"{who}the persona knockout shifts the answer most in blocks {start}:{end} (the largest "
                             "median persona_shift over cells among the bands narrower than the whole model).")
            except PersonaError:
                lines.append(f"{who}persona_shift is undefined in most cells: the persona barely moves this model's "
                             "answer.")
        elif experiment == "heads" and "ranked_block" in one:
            rank_by = spec_of(one).get("rank_by", "persona_shift")
            lines.append(f"{who}ranked first by median {rank_by}: block {int(one.ranked_block[0])}, head "
                         f"{int(one.ranked_head[0])}.")
    return lines


def _bands(value) -> str:
    if isinstance(value, list) and value and isinstance(value[0], list):
        return ", ".join(f"{a}:{b}" for a, b in value)
    if isinstance(value, list) and len(value) == 2:
        return f"{value[0]}:{value[1]}"
    return _listed(value)


def _listed(value) -> str:
    if isinstance(value, list):
        return ", ".join(_listed(v) if not isinstance(v, list) else "{" + _listed(v) + "}" for v in value) or "all"
    return str(value)


# --- figures ------------------------------------------------------------------------------------


# A PNG this much older than its result file still counts as drawn from it: a fresh checkout
# writes the two in arbitrary order, a few milliseconds apart.
CHECKOUT_SLACK_S = 2.0


def _published_together(png: Path, path: Path) -> bool:
    """Whether the folder's MANIFEST.json lists the PNG and the result file with their present
    hashes: then they were published together, whatever their times (a checkout that updated the
    result but not its unchanged figure leaves the figure older)."""
    import hashlib

    from ..storage.manifest import NAME, read_manifest

    if not (path.parent / NAME).exists():
        return False
    try:
        listed = read_manifest(path.parent).get("files", {})
    except (OSError, ValueError):
        return False
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()
    return listed.get(png.name) == digest(png) and listed.get(path.name) == digest(path)


def figures(ds, path: Path) -> list[dict]:
    """Every figure of the dataset as a data URI: the PNG next to the file where there is one as
    new as the file, else drawn now (in memory)."""
    from ..plots import FIGURES, figures_for

    if ds.attrs.get("experiment") not in FIGURES:
        return []
    out = []
    drawn = None
    for name in _figure_names(ds):
        png = path.with_name(f"{path.stem}-{name}.png")
        if png.exists() and (png.stat().st_mtime >= path.stat().st_mtime - CHECKOUT_SLACK_S
                             or _published_together(png, path)):
            data = png.read_bytes()
        else:
            drawn = drawn if drawn is not None else figures_for(ds)
            buffer = io.BytesIO()
            drawn[name].savefig(buffer, format="png", dpi=110, metadata={"Software": None})
            data = buffer.getvalue()
        out.append({"name": name, "alt": f"{ds.attrs.get('experiment')} figure {name} of {path.name}",
                    "src": "data:image/png;base64," + base64.b64encode(data).decode("ascii")})
    return out


def _figure_names(ds) -> list[str]:
    import re

    from ..plots import ACROSS_MODELS, figure_names

    experiment = ds.attrs.get("experiment")
    models = [str(m) for m in ds["model"].values] if "model" in ds.dims else [None]
    names = [name + ("" if len(models) == 1 else "-" + re.sub(r"[^A-Za-z0-9._-]+", "_", m))
             for m in models for name in figure_names(ds)]
    return names + (["across_models"] if len(models) > 1 and experiment in ACROSS_MODELS else [])


# --- the page -----------------------------------------------------------------------------------


def render(title: str, sections: list[dict], claims: dict | None = None, orphans=()) -> str:
    from importlib import resources

    import jinja2

    source = resources.files("nnsight_persona.report").joinpath("templates", "report.html.j2").read_text(encoding="utf-8")
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    from .. import __version__

    incomplete = [s for s in sections if s["incomplete"]]
    experiments: dict[str, list[dict]] = {}
    for s in sections:
        experiments.setdefault(s["experiment"], []).append(s)
    return env.from_string(source).render(title=title, sections=sections, incomplete=incomplete,
                                          experiments=list(experiments.items()), claims=claims,
                                          orphans=list(orphans), version=__version__)
