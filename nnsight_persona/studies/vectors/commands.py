"""`nnsight-persona vectors ...`: persona vectors (extract, steer, monitor, trace, export, import-pt).

Layer convention everywhere: L = hidden_states[L] of transformers (0 = embeddings, L = the output
of block L-1, which is where steering adds; n_layers = the last block's raw output, before the
final norm). Steering libraries that index blocks are off by one from this.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from .assembly import load_vectors
from ...commands.common import DEVICE_OPTION, OVERWRITE_OPTION, clean_errors, progress_options, write_result

LAYER_HELP = ("'all', or a list like '2,4,6-8'. Layer L = hidden_states[L]: 0 = embeddings, L = output of block L-1 "
              "(steering adds there); n_layers = last block output before the final norm.")


@click.group(name="vectors")
def vectors() -> None:
    """Persona vectors: extract, steer, monitor, trace across checkpoints (layer L = hidden_states[L])."""


def _model_options(fn):
    for option in reversed([
        click.option("--model", "model_spec", default="toy", show_default=True,
                     help="'toy', 'smollm2', a hub id or a local model directory."),
        click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default=None,
                     help="Model dtype [default: per family]."),
        DEVICE_OPTION,
        click.option("--ndif-host", default=None, help="'local': run through nnsight's local simulation of the remote path."),
        click.option("--batch-size", default=16, show_default=True, type=click.IntRange(min=1)),
        click.option("--n-tokens", default=32, show_default=True, type=click.IntRange(min=1),
                     help="Greedy answer tokens (max; an answer ends at end of turn)."),
        click.option("--n-questions", default=0, show_default=True, type=click.IntRange(min=0),
                     help="Use the first N questions of each trait file (0: all)."),
        click.option("--scorer", default="offline", show_default=True,
                     help="'offline' (marker lexicon + the model's own A/B answer; repetition-based coherence), "
                          "'evidence' (log-likelihood of the answer under the trait's positive prompt against its "
                          "negative one, nats/token; coherence 100 x distinct token 3-grams) or the URL of an "
                          "OpenAI-compatible endpoint (e.g. http://127.0.0.1:8000/v1)."),
        click.option("--judge-model", default="judge", show_default=True, help="Model name sent to the endpoint."),
        progress_options,
        OVERWRITE_OPTION,
    ]):
        fn = option(fn)
    return fn


def _options(model_spec, dtype, device, ndif_host, batch_size, n_tokens, n_questions, scorer, judge_model, progress,
             overwrite, out):
    """The shared model options as assembly.VectorsOptions (output: --out, else runs/<model>/...)."""
    from .assembly import VectorsOptions

    return VectorsOptions(model_spec=model_spec, dtype=dtype, device=device, ndif_host=ndif_host,
                          batch_size=batch_size, n_tokens=n_tokens, n_questions=n_questions, scorer=scorer,
                          judge_model=judge_model, progress=progress, overwrite=overwrite, out=out, default_out=True)


def _stack():
    """An ExitStack closed when the command ends (the output locks are held until then)."""
    from contextlib import ExitStack

    return click.get_current_context().with_resource(ExitStack())


@vectors.command()
@_model_options
@click.option("--traits", default=None, help="Comma list of trait names (experiments/traits/) or YAML files [default: all].")
@click.option("--layers", default="all", show_default=True, help=LAYER_HELP)
@click.option("--token-sets", default="response_avg,prompt_avg,prompt_last", show_default=True,
              help="Which mean residuals to take the difference of: response_avg (the original's), prompt_avg, prompt_last.")
@click.option("--threshold", default=None, type=float,
              help="Keep a (pos, neg) pair when pos >= T, neg < T and both coherences >= T (0-100 scorers) "
                   "[default: 50; with --scorer evidence T is in nats/token, default 0, and the coherence "
                   "threshold 50].")
@click.option("--keep", type=click.Choice(["filter", "all"]), default="filter", show_default=True,
              help="filter: the original's pair filter; all: every pair (the instruction's direction, expressed or not).")
@click.option("--checkpoint-label", default="", help="Label of the checkpoint dim [default: the weights' revision].")
@click.option("--step", default=-1, show_default=True, type=int, help="Training step of this checkpoint (-1: unknown).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Output netCDF [default: runs/<model>/vectors-extract.nc].")
@click.option("--export", "export_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the vectors as safetensors with metadata (one file per elicitation variant).")
@click.option("--elicitation", default="instruction", show_default=True,
              help="How each side is elicited, or a comma list to compare (an `elicitation` dim): instruction "
                   "(the trait's pairs), character (a third-person description), two-shot (example dialogue "
                   "turns), combined (all three).")
@click.option("--fresh", is_flag=True,
              help="Start over even if --out holds an unfinished run of the same spec (default: resume it).")
@clean_errors
def extract(model_spec, dtype, device, ndif_host, batch_size, n_tokens, n_questions, scorer, judge_model, progress,
            overwrite, traits, layers, token_sets, threshold, keep, checkpoint_label, step, out, export_path,
            elicitation, fresh):
    """Extract persona vectors: difference of mean residuals of kept positive and negative answers,
    at every layer L = hidden_states[L]. A trait with no kept pair is recorded as nonextractable."""
    from .assembly import extract_run
    from . import io
    from .extract import summary_lines

    opts = _options(model_spec, dtype, device, ndif_host, batch_size, n_tokens, n_questions, scorer, judge_model,
                    progress, overwrite, out)
    ds, target = extract_run(opts, _stack(), traits=traits, layers=layers, token_sets=token_sets, threshold=threshold,
                             keep=keep, checkpoint_label=checkpoint_label, step=step,
                             elicitation=elicitation, fresh=fresh)
    write_result(ds, target)
    for line in summary_lines(ds):
        click.echo(line)
    if "elicitation" in ds.dims:
        _figure(lambda: __import__("nnsight_persona.plots.persona_vectors", fromlist=["x"]).plot_elicitation_cos(ds),
                target.path.with_suffix("").as_posix() + "-elicitation")
    if export_path is not None:
        for path in io.export_variants(ds, export_path):
            click.echo(f"wrote {path}")


def _steer_options(fn):
    for option in reversed([
        click.option("--vectors", "vectors_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
                     help="Vectors: a `vectors extract` .nc, an exported .safetensors, or an original .pt."),
        click.option("--traits", default=None, help="Comma list of traits [default: every trait in the vectors file]."),
        click.option("--layers", default=None, help=LAYER_HELP + " [default: round(0.5 x n_layers)]"),
        click.option("--token-set", default="response_avg", show_default=True),
    ]):
        fn = option(fn)
    return fn


@vectors.command()
@_model_options
@_steer_options
@click.option("--coefs", default="0,2,4,8", show_default=True, help="Comma list of steering coefficients.")
@click.option("--positions", type=click.Choice(["response", "prompt", "all"]), default="response", show_default=True,
              help="response: the last position of every forward pass (last prompt token, then each new one); "
                   "prompt: the prompt tokens at the prefill; all: both.")
@click.option("--scale", type=click.Choice(["raw", "norm", "ratio"]), default="raw", show_default=True,
              help="raw: add coef x v; norm: coef x mean residual norm at L along v/|v|; ratio: coef x "
                   "(target/source residual norm) x v.")
@click.option("--kinds", default="vector,random,shuffled", show_default=True,
              help="vector, random (Gaussian of equal norm), shuffled (label-shuffled, equal norm).")
@click.option("--seeds", default="0", show_default=True, help="Seeds of the controls (one run per seed).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None)
@clean_errors
def steer(model_spec, dtype, device, ndif_host, batch_size, n_tokens, n_questions, scorer, judge_model, progress,
          overwrite, vectors_path, traits, layers, token_set, coefs, positions, scale, kinds, seeds, out):
    """Steer generation by adding coef x v at layer L = hidden_states[L] (the output of block L-1);
    trait score and coherence per question, the AxBench score against the prompting baseline."""
    from .assembly import steer_run

    opts = _options(model_spec, dtype, device, ndif_host, batch_size, n_tokens, n_questions, scorer, judge_model,
                    progress, overwrite, out)
    ds, target = steer_run(opts, _stack(), vectors_path, traits=traits, layers=layers, token_set=token_set,
                           coefs=_floats(coefs, "--coefs"), positions=positions, scale=scale, kinds=kinds,
                           seeds=_floats(seeds, "--seeds"))
    write_result(ds, target)
    out = target.path
    _steer_summary(ds)
    if "evidence" in ds:  # trait evidence in nats/token: its own figure, with intervals over questions
        _figure(lambda: __import__("nnsight_persona.plots.steering_evidence", fromlist=["x"]).plot_steering_evidence(ds),
                out.with_suffix("").as_posix() + "-steering")
    else:
        _figure(lambda: __import__("nnsight_persona.plots.persona_vectors", fromlist=["x"]).plot_steering(ds),
                out.with_suffix("").as_posix() + "-steering")


def _floats(text: str, flag: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a comma list of numbers", param_hint=flag) from None


def _steer_summary(ds) -> None:
    import numpy as np

    d = ds.isel(model=0)
    for trait in d.trait.values.tolist():
        base = d.baseline_score.sel(trait=trait)
        click.echo(f"{trait}: steering score (AxBench) clean {float(base.sel(baseline='clean')):.1f}, "
                   f"prompted {float(base.sel(baseline='prompted')):.1f}")
        for layer in d.layer.values.tolist():
            best = d.steering_score.sel(trait=trait, layer=layer, kind="vector")
            coef = float(best.coef.values[int(np.nanargmax(best.values))]) if np.isfinite(best.values).any() else float('nan')
            click.echo(f"  L{layer}: best coef {coef:g} score {float(best.max()):.1f}; by coef "
                       + " ".join(f"{float(c):g}:{float(s):.1f}" for c, s in zip(best.coef.values, best.values)))


def _figure(make, base: str) -> None:
    from ...plots import save_figure

    for path in save_figure(make(), base):
        click.echo(f"wrote {path}")


@vectors.command()
@_model_options
@_steer_options
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None)
@clean_errors
def monitor(model_spec, dtype, device, ndif_host, batch_size, n_tokens, n_questions, scorer, judge_model, progress,
            overwrite, vectors_path, traits, layers, token_set, out):
    """Projections on the unit persona vector (and cosines) of the last prompt token and the mean
    answer residual, for each evaluation question alone and under the positive and negative instruction."""
    from .assembly import monitor_run

    opts = _options(model_spec, dtype, device, ndif_host, batch_size, n_tokens, n_questions, scorer, judge_model,
                    progress, overwrite, out)
    ds, target = monitor_run(opts, _stack(), vectors_path, traits=traits, layers=layers, token_set=token_set)
    write_result(ds, target)
    d = ds.isel(model=0).sel(read="prompt_last")
    for trait in d.trait.values.tolist():
        p = d.projection.sel(trait=trait).mean("question")
        layer = int(p.layer[len(p.layer) // 2])
        click.echo(f"{trait} L{layer} prompt_last projection: " + ", ".join(
            f"{c} {float(p.sel(condition=c, layer=layer)):.2f}" for c in d.condition.values.tolist()))


@vectors.command()
@_model_options
@click.option("--traits", default=None, help="Comma list of trait names (experiments/traits/) or YAML files [default: all].")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Output netCDF [default: runs/<model>/vectors-calibrate.nc].")
@clean_errors
def calibrate(model_spec, dtype, device, ndif_host, batch_size, n_tokens, n_questions, scorer, judge_model, progress,
              overwrite, traits, out):
    """Does the model express each trait in its prompt? Greedy answers to the evaluation questions
    under each instruction pair's positive prompt and with no instruction, scored by the evidence
    measure (the positive prompt against the negative one, and against none): AUROC (bootstrap
    interval over questions) and a null threshold per trait. --scorer is not used."""
    from .assembly import calibrate_run
    from .calibrate import summary_lines

    opts = _options(model_spec, dtype, device, ndif_host, batch_size, n_tokens, n_questions, scorer, judge_model,
                    progress, overwrite, out)
    ds, target = calibrate_run(opts, _stack(), traits=traits)
    write_result(ds, target)
    for line in summary_lines(ds):
        click.echo(line)


@vectors.command("export")
@click.argument("vectors_path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="The .safetensors file.")
@clean_errors
def export_command(vectors_path, out):
    """Write the vectors of an extract file as safetensors, with metadata (model, revision, layer
    convention, token sets, threshold, scorer, pairs kept)."""
    from . import io

    click.echo(f"wrote {io.export_safetensors(load_vectors(vectors_path), out)}")


@vectors.command("import-pt")
@click.argument("pt_path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--trait", required=True, help="The trait the vector is of.")
@click.option("--model", "model_spec", default="", help="The model it was extracted from (recorded).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="The .nc file to write.")
@clean_errors
def import_pt(pt_path, trait, model_spec, out):
    """Import an original persona-vectors .pt file ([n_layers + 1, hidden], index L = hidden_states[L])."""
    from . import io
    from ...storage.store import save_dataset

    ds = io.import_original_pt(pt_path, trait, model_spec)
    ds.attrs.update(experiment="vectors-import", completed=1, spec=json.dumps({"source": pt_path.name}))
    save_dataset(ds, out)
    click.echo(f"wrote {out}: {trait}, {ds.sizes['layer']} layers x {ds.sizes['hidden']}")


@vectors.command("trace")
@click.option("--revision", "revisions", multiple=True, required=True,
              type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="A local checkpoint directory; give it once per checkpoint (ordered by training step, read "
                   "from checkpoint.json or the folder name). The last step is the final checkpoint.")
@click.option("--traits", default=None, help="Comma list of traits [default: all].")
@click.option("--layers", default="all", show_default=True, help=LAYER_HELP)
@click.option("--steer-layer", default=None, type=int, help="Layer to steer at [default: round(0.5 x n_layers)].")
@click.option("--coef", default=1.0, show_default=True, type=float, help="Steering coefficient (with --scale).")
@click.option("--scale", type=click.Choice(["raw", "norm"]), default="norm", show_default=True,
              help="norm: coef x the checkpoint's mean residual norm at the layer (the pretraining paper's).")
@click.option("--seeds", default="0,1,2", show_default=True, help="Seeds of the Gaussian and label-shuffled controls.")
@click.option("--token-set", default="response_avg", show_default=True, help="Which vector steers (and is reported).")
@click.option("--n-tokens", default=32, show_default=True, type=click.IntRange(min=1))
@click.option("--n-questions", default=0, show_default=True, type=click.IntRange(min=0))
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(min=1))
@click.option("--threshold", default=50.0, show_default=True, type=click.FloatRange(0, 100))
@click.option("--keep", type=click.Choice(["filter", "all"]), default="filter", show_default=True,
              help="filter: the original's pair filter (a checkpoint that does not express the trait is "
                   "nonextractable); all: every pair, so the instruction's direction is traced at every checkpoint.")
@click.option("--out-dir", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--transfer/--no-transfer", default=True, show_default=True,
              help="Also steer the final checkpoint with each checkpoint's vector (and controls), scaled by the "
                   "final/source residual-norm ratio at the steer layer.")
@click.option("--progress/--no-progress", default=True)
@OVERWRITE_OPTION
@clean_errors
def trace_command(revisions, traits, layers, steer_layer, coef, scale, seeds, token_set, n_tokens, n_questions, batch_size,
                  threshold, keep, out_dir, transfer, progress, overwrite):
    """Persona vectors across training checkpoints: extract at each, steer each checkpoint with its
    own vector (and Gaussian / label-shuffled controls of equal norm) and, with --transfer, the final
    checkpoint with each checkpoint's vector (times the final/source residual-norm ratio), then cosine to the final
    checkpoint, between consecutive ones, the full matrix, norms relative to the residual, and
    per-question sign-flip and sign tests with Bonferroni within a trait."""
    from .assembly import trace_run
    from ...plots.persona_vectors import plot_cos_matrix, plot_cos_to_final, plot_trace_steering
    from ...storage.store import save_dataset

    made = trace_run(revisions, _stack(), write_result, traits=traits, layers=layers, steer_layer=steer_layer,
                     coef=coef, scale=scale, seeds=_floats(seeds, "--seeds"), token_set=token_set, n_tokens=n_tokens,
                     n_questions=n_questions, batch_size=batch_size, threshold=threshold, keep=keep, out_dir=out_dir,
                     progress=progress, overwrite=overwrite, transfer=transfer)
    result, geometry, at = made.result, made.geometry, made.steer_layer
    path = save_dataset(result, out_dir / "trace.nc")
    click.echo(f"wrote {path}")
    _figure(lambda: plot_cos_to_final(geometry, token_set), (out_dir / "trace-cos_to_final").as_posix())
    _figure(lambda: plot_cos_matrix(geometry, at, token_set), (out_dir / "trace-cos_matrix").as_posix())
    _figure(lambda: plot_trace_steering(result), (out_dir / "trace-steering").as_posix())
    for trait in result.trait.values.tolist():
        click.echo(f"{trait}: cos to final at L{at}: " + ", ".join(
            f"{int(s)} {float(c):.2f}" for s, c in zip(result.step.values, result.cos_to_final.sel(
                trait=trait, layer=at, token_set=token_set).values)))
        for tgt in (result.target.values.tolist() if "target" in result.dims else [None]):
            d = result.sel(trait=trait, kind="vector", **({"target": tgt} if tgt else {}))
            click.echo(f"  steering delta{' on ' + tgt if tgt else ''} (p bonferroni): " + ", ".join(
                f"{int(s)} {float(x):+.1f} ({float(p):.3f})" for s, x, p in zip(result.step.values, d.delta_trait.values,
                                                                             d.p_bonferroni.values)))


@vectors.command("vs-delta")
@click.option("--vectors", "vectors_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--capture", "capture_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A capture file (`nnsight-persona capture`) whose grid has personas named like the traits.")
@click.option("--position", default="p_last", show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True)
@clean_errors
def vs_delta(vectors_path, capture_path, position, out):
    """Cosine per layer between each persona vector and the decomposition's Delta_X = h_XB - h_BB
    at a position (default p_last) of a capture, for personas named like the traits."""
    from .assembly import vs_delta_run
    from ...storage.store import save_dataset

    ds = vs_delta_run(vectors_path, capture_path, position)
    save_dataset(ds, out)
    click.echo(f"wrote {out}")
    for trait in ds.trait.values.tolist():
        for s in ds.token_set.values.tolist():
            click.echo(f"{trait} {s}: " + " ".join(f"L{L} {float(c):.2f}" for L, c in
                                                   zip(ds.layer.values, ds.cosine.sel(trait=trait, token_set=s).values)))


@vectors.command("vs-edit")
@click.option("--vectors", "vectors_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A `vectors extract` .nc (or exported .safetensors) of the same model, with traits named like "
                   "the grid's personas.")
@click.option("--model", "model_spec", default="toy", show_default=True, help="'toy', 'smollm2', a hub id or a local model directory.")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default=None, help="Model dtype [default: per family].")
@DEVICE_OPTION
@click.option("--grid", "grid_name", default="toy", show_default=True, help="A grid with markers (name or YAML file).")
@click.option("--personas", default=None, help="Comma list [default: the grid's personas with markers that are traits of the vectors file].")
@click.option("--layers", default=None, help=LAYER_HELP + " [default: round(0.55 x n_layers), the markers layer]")
@click.option("--coefs", default="0,0.05,0.1,0.2,0.5,1,2,4", show_default=True,
              help="Steering coefficients in units of |Delta_X| at the cell's p_last and layer (1: the one-site edit's size).")
@click.option("--conditions", default="vector,delta_x", show_default=True,
              help="Steered at every response step: vector (coef x |Delta_X| x v/|v|), delta_x (coef x Delta_X).")
@click.option("--token-set", default="response_avg", show_default=True, help="Which persona vector steers.")
@click.option("--capture", "capture_path", default=None, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A capture file holding p_last at the layers [default: capture the cells first].")
@click.option("--n-tokens", default=32, show_default=True, type=click.IntRange(min=1))
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(min=1))
@click.option("--scorer", default="offline", show_default=True,
              help="'offline', 'evidence' (the trait score is the answer's evidence, XY against BY) or an "
                   "OpenAI-compatible endpoint URL.")
@click.option("--judge-model", default="judge", show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Output netCDF [default: runs/<model>/vectors-vs-edit.nc]; the figure is written beside it.")
@progress_options
@OVERWRITE_OPTION
@clean_errors
def vs_edit(vectors_path, model_spec, dtype, device, grid_name, personas, layers, coefs, conditions, token_set,
            capture_path, n_tokens, batch_size, scorer, judge_model, out, progress, overwrite):
    """Steering with the persona vector at every response step against the one-site Delta_X edit at
    p_last (and Delta_X at every step), on the bare task prompts, with the persona prompt as ceiling:
    persona-marker rate, trait score and coherence per condition, coefficient and layer."""
    from .assembly import vs_edit_run

    opts = _options(model_spec, dtype, device, None, batch_size, n_tokens, 0, scorer, judge_model, progress,
                    overwrite, out)
    ds, target = vs_edit_run(opts, _stack(), vectors_path, grid=grid_name, personas=personas, layers=layers,
                             coefs=_floats(coefs, "--coefs"), conditions=conditions, token_set=token_set,
                             capture=capture_path)
    out = target.path
    write_result(ds, target)
    d = ds.isel(model=0)
    for layer in d.layer.values.tolist():
        r = d.ref_marker_rate.sel(layer=layer)
        click.echo(f"L{layer} marker rate: " + ", ".join(f"{k} {float(r.sel(reference=k)):.2f}" for k in d.reference.values))
        for cond in d.condition.values.tolist():
            click.echo(f"  steer {cond}: " + " ".join(
                f"{float(c):g}:{float(x):.2f}" for c, x in zip(d.coef.values, d.marker_rate.sel(condition=cond, layer=layer).values)))
    _figure(lambda: __import__("nnsight_persona.plots.persona_vectors", fromlist=["x"]).plot_vs_edit(ds),
            out.with_suffix("").as_posix())


COMMANDS = (vectors,)
