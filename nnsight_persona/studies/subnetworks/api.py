"""The Python API of persona subnetworks: `subnetwork_find` and `subnetwork_eval`, each the run of
its command (assembled by assembly.py), returning its Dataset."""

from __future__ import annotations

from contextlib import ExitStack

from ..run_setup import finished, joined


def subnetwork_find(model=None, *, persona_set="toy", personas=None, method="contrastive", activation="relu", tau=2.0,
                    sparsity=(0.3,), mlp_only=False, head=False, structured=False, seed=0, tokens="answer",
                    dtype=None, device="auto", batch_size=16, out=None, masks=None, overwrite=False, progress=True):
    """Persona subnetworks (`subnetwork find`): each persona's mask at each sparsity from its
    calibration items; returns the statistics (kept fraction, overlap, Jaccard). With `out` the
    masks go next to it (<stem>-masks.safetensors) unless `masks` names their file; subnetwork_eval
    reads that file."""
    from .assembly import find_run

    with ExitStack() as stack:
        made = find_run(stack, model_spec="toy" if model is None else model, set_name=persona_set,
                        personas=joined(personas), method=method, activation=activation, tau=tau, sparsity=sparsity,
                        mlp_only=mlp_only, head=head, structured=structured, seed=seed, tokens=tokens, dtype=dtype,
                        device=device, batch_size=batch_size, out=out, mask_file=masks, progress=progress,
                        overwrite=overwrite)
        return finished(made.ds, made.target)


def subnetwork_eval(masks, *, model=None, persona_set=None, random_seeds=3, n_tokens=32, prompt_baseline=True,
                    dtype=None, device="auto", batch_size=16, out=None, remote=False, ndif_host=None, overwrite=False,
                    progress=True):
    """Evaluation of a mask file (`subnetwork eval`) with no persona prompt: A/B alignment, markers
    and perplexity of each mask against the unpruned model, the prompted one and random masks.
    `model` [default: the one the masks were found on] and `persona_set` [default: the masks']."""
    from .assembly import eval_run

    with ExitStack() as stack:
        ds, target = eval_run(stack, masks, model_spec=model, set_name=persona_set, random_seeds=random_seeds,
                              n_tokens=n_tokens, no_prompt_baseline=not prompt_baseline, dtype=dtype, device=device,
                              batch_size=batch_size, out=out, remote=remote, ndif_host=ndif_host, progress=progress,
                              overwrite=overwrite)
        return finished(ds, target)
