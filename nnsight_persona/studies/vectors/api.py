"""The Python API of persona vectors: `vectors_extract` is `vectors extract`, and so on; each returns
the Dataset its command writes (assembled by assembly.py)."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

from ..run_setup import finished, joined


def _vectors_options(model, dtype, device, ndif_host, batch_size, n_tokens, n_questions, scorer, judge_model,
                     progress, overwrite, out):
    from .assembly import VectorsOptions

    return VectorsOptions(model_spec="toy" if model is None else model, dtype=dtype, device=device,
                          ndif_host=ndif_host, batch_size=batch_size, n_tokens=n_tokens, n_questions=n_questions,
                          scorer=scorer, judge_model=judge_model, progress=progress, overwrite=overwrite,
                          out=Path(out) if out is not None else None)


def vectors_extract(model=None, *, traits=None, layers="all", token_sets=("response_avg", "prompt_avg", "prompt_last"),
                    threshold=None, keep="filter", checkpoint_label="", step=-1, n_tokens=32, n_questions=0,
                    scorer="offline", judge_model="judge", dtype=None, device="auto", ndif_host=None, batch_size=16,
                    out=None, export=None, overwrite=False, progress=True, elicitation="instruction", fresh=False):
    """Persona vectors (`vectors extract`): mean(kept positive answers) - mean(kept negative ones)
    of the residual at every layer L = hidden_states[L], per trait and token set. `traits`: names
    (experiments/traits/) or YAML files [default: all]; `export`: also write the vectors as
    safetensors there (one file per variant); `elicitation`: a variant (instruction, character,
    two-shot, combined) or several to compare; an unfinished result at `out` is resumed (`fresh`:
    started over)."""
    from .assembly import extract_run

    opts = _vectors_options(model, dtype, device, ndif_host, batch_size, n_tokens, n_questions, scorer, judge_model,
                            progress, overwrite, out)
    with ExitStack() as stack:
        ds, target = extract_run(opts, stack, traits=joined(traits), layers=joined(layers),
                                 token_sets=joined(token_sets), threshold=threshold, keep=keep,
                                 checkpoint_label=checkpoint_label, step=step, elicitation=joined(elicitation),
                                 fresh=fresh)
        ds = finished(ds, target)
    if export is not None:
        from . import io

        io.export_variants(ds, export)
    return ds


def vectors_steer(model=None, *, vectors, traits=None, layers=None, token_set="response_avg", coefs=(0, 2, 4, 8),
                  positions="response", scale="raw", kinds=("vector", "random", "shuffled"), seeds=(0,), n_tokens=32,
                  n_questions=0, scorer="offline", judge_model="judge", dtype=None, device="auto", ndif_host=None,
                  batch_size=16, out=None, overwrite=False, progress=True):
    """Steering (`vectors steer`): coef x v added at layer L = hidden_states[L]; trait score and
    coherence per question, and the AxBench score against the prompting baseline. `vectors`: a
    vectors file (.nc, .safetensors, .pt) or vectors_extract's Dataset; `layers` [default:
    round(0.5 x n_layers)]."""
    from .assembly import steer_run

    opts = _vectors_options(model, dtype, device, ndif_host, batch_size, n_tokens, n_questions, scorer, judge_model,
                            progress, overwrite, out)
    with ExitStack() as stack:
        ds, target = steer_run(opts, stack, vectors, traits=joined(traits), layers=joined(layers),
                               token_set=token_set, coefs=coefs, positions=positions, scale=scale,
                               kinds=joined(kinds), seeds=seeds)
        return finished(ds, target)


def vectors_monitor(model=None, *, vectors, traits=None, layers=None, token_set="response_avg", n_tokens=32,
                    n_questions=0, scorer="offline", judge_model="judge", dtype=None, device="auto", ndif_host=None,
                    batch_size=16, out=None, overwrite=False, progress=True):
    """Monitoring (`vectors monitor`): projections on the unit persona vector (and cosines) of the
    last prompt token and the mean answer residual, per evaluation question, with no instruction
    and under the positive and the negative one. `layers` [default: the vectors' layers]."""
    from .assembly import monitor_run

    opts = _vectors_options(model, dtype, device, ndif_host, batch_size, n_tokens, n_questions, scorer, judge_model,
                            progress, overwrite, out)
    with ExitStack() as stack:
        ds, target = monitor_run(opts, stack, vectors, traits=joined(traits), layers=joined(layers),
                                 token_set=token_set)
        return finished(ds, target)


def vectors_trace(revisions, *, traits=None, layers="all", steer_layer=None, coef=1.0, scale="norm", seeds=(0, 1, 2),
                  token_set="response_avg", n_tokens=32, n_questions=0, batch_size=16, threshold=50.0, keep="filter",
                  out_dir=None, overwrite=False, progress=True, transfer=True):
    """Persona vectors across training checkpoints (`vectors trace`): `revisions` are local
    checkpoint folders (or models loaded from them), ordered by the training step of their
    checkpoint.json or folder name. `transfer`: also steer the final checkpoint with each
    checkpoint's vector (times the final/source residual-norm ratio). With `out_dir` the
    per-checkpoint files and trace.nc are written there, as the command does."""
    from .assembly import trace_run
    from ...storage.store import save_dataset

    if isinstance(revisions, (str, Path)) or not hasattr(revisions, "__iter__"):
        revisions = [revisions]
    with ExitStack() as stack:
        made = trace_run(list(revisions), stack, finished, traits=joined(traits), layers=joined(layers),
                         steer_layer=steer_layer, coef=coef, scale=scale, seeds=seeds, token_set=token_set,
                         n_tokens=n_tokens, n_questions=n_questions, batch_size=batch_size, threshold=threshold,
                         keep=keep, out_dir=out_dir, progress=progress, overwrite=overwrite, transfer=transfer)
    if out_dir is not None:
        save_dataset(made.result, Path(out_dir) / "trace.nc")
    return made.result


def vectors_vs_edit(model=None, *, vectors, grid="toy", personas=None, layers=None,
                    coefs=(0, 0.05, 0.1, 0.2, 0.5, 1, 2, 4), conditions=("vector", "delta_x"), token_set="response_avg",
                    capture=None, n_tokens=32, scorer="offline", judge_model="judge", dtype=None, device="auto",
                    batch_size=16, out=None, overwrite=False, progress=True):
    """Steering along the persona vector at every response step against the one-site Delta_X edit
    at p_last (`vectors vs-edit`), on the grid's bare task prompts, with the persona prompt as the
    ceiling. `coefs` are in units of |Delta_X| at the cell and layer; `layers` [default:
    round(0.55 x n_layers)]; `capture`: a capture file or Dataset holding p_last at the layers."""
    from .assembly import vs_edit_run

    opts = _vectors_options(model, dtype, device, None, batch_size, n_tokens, 0, scorer, judge_model,
                            progress, overwrite, out)
    with ExitStack() as stack:
        ds, target = vs_edit_run(opts, stack, vectors, grid=grid, personas=joined(personas), layers=joined(layers),
                                 coefs=coefs, conditions=joined(conditions), token_set=token_set, capture=capture)
        return finished(ds, target)


def vectors_vs_delta(vectors, capture, *, position="p_last", out=None):
    """Cosine per layer of each persona vector with Delta_X = h_XB - h_BB at `position` of a
    capture (`vectors vs-delta`; files or Datasets), for the capture's personas named like the traits."""
    from .assembly import vs_delta_run
    from ...storage.store import save_dataset

    ds = vs_delta_run(vectors, capture, position)
    if out is not None:
        save_dataset(ds, out)
    return ds


def vectors_calibrate(model=None, *, traits=None, n_tokens=40, n_questions=0, dtype=None, device="auto",
                      ndif_host=None, batch_size=16, out=None, overwrite=False, progress=True):
    """Evidence calibration (`vectors calibrate`): per trait, the AUROC of the evidence of its
    prompted answers against its unprompted ones (against the negative prompt and against none),
    with a bootstrap interval over questions and a null threshold."""
    from .assembly import calibrate_run

    opts = _vectors_options(model, dtype, device, ndif_host, batch_size, n_tokens, n_questions, "evidence", "judge",
                            progress, overwrite, out)
    with ExitStack() as stack:
        ds, target = calibrate_run(opts, stack, traits=joined(traits))
        return finished(ds, target)
