"""An interrupted `vectors extract` keeps what it finished (generated batches, finished traits)
and, run again on its partial file, computes only the rest and ends with exactly the dataset of an
uninterrupted run; a changed argument on a partial file is refused."""

import numpy as np
import pytest
from click.testing import CliRunner

from nnsight_persona.cli import main
from nnsight_persona.studies.vectors import extract, passes
from nnsight_persona.studies.vectors.traits import load_trait
from nnsight_persona.storage.store import Checkpoint, load_dataset, save_dataset

PER_SAMPLE = ("answer_ids", "answer", "trait_score", "coherence", "kept", "generated")
PER_TRAIT = ("vector", "shuffled", "norm", "resid_norm", "n_kept", "n_pairs", "pass_rate", "outcome")


@pytest.fixture(scope="module")
def toy():
    from nnsight_persona.models.loading import load_model

    return load_model("toy", device="cpu")


@pytest.fixture(scope="module")
def traits():
    return [load_trait("pirate"), load_trait("robot")]


SPECS = {
    "one variant": dict(elicitation=("instruction",)),
    "two variants": dict(elicitation=("instruction", "two-shot")),
}


def _spec(**kw):
    base = dict(traits=("pirate", "robot"), layers=(0, 3, 8), n_tokens=10, n_questions=2, batch_size=3)
    return extract.ExtractSpec(**{**base, **kw})


def assert_same(got, want):
    assert got.attrs["completed"] == 1
    for name in PER_SAMPLE + PER_TRAIT + tuple(v for v in ("elicitation_cos",) if v in want):
        a, b = got[name].values, want[name].values
        if a.dtype.kind == "f":
            np.testing.assert_array_equal(a, b, err_msg=name)  # the same batches: bit for bit
        else:
            assert a.tolist() == b.tolist(), name
    for coord in ("side", "pair", "question_index", "system", "user", "messages", "sample_elicitation"):
        assert got[coord].values.tolist() == want[coord].values.tolist(), coord


def _interrupt(monkeypatch, module, name, at):
    """Make the `at`-th call of module.name raise KeyboardInterrupt (Ctrl-C); count calls."""
    real = getattr(module, name)
    calls = {"n": 0, "at": at}

    def wrapped(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == calls["at"]:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapped)
    return calls


def _through_a_file(ds, tmp_path):
    """The partial result as the command keeps it: written to netCDF and read back."""
    return load_dataset(save_dataset(ds, tmp_path / "partial.nc"))


@pytest.mark.parametrize("kind", SPECS, ids=list(SPECS))
def test_interrupted_after_the_first_generated_batch_then_resumed_equals_an_uninterrupted_run(
        toy, traits, tmp_path, monkeypatch, kind):
    spec = _spec(**SPECS[kind])
    full = extract.run(toy, traits, spec, progress=False)
    saved = []
    calls = _interrupt(monkeypatch, passes, "generate_with_edit", at=2)
    partial = extract.run(toy, traits, spec, progress=False, checkpoint=lambda make: saved.append(make()))
    assert partial.attrs["completed"] == 0 and "Ctrl-C" in partial.attrs["stopped_by"]
    n_batch = spec.batch_size
    assert partial.generated.values.sum() == n_batch  # the first batch, kept
    assert (partial.outcome.values == "").all()  # no trait finished
    assert len(saved) == 1 and saved[0].generated.values.sum() == n_batch  # checkpointed after that batch
    partial = _through_a_file(partial, tmp_path)
    calls["n"], calls["at"] = 0, 10**9
    resumed = extract.run(toy, traits, spec, progress=False, previous=partial)
    total = -(-len(full.sample) // n_batch) if kind == "one variant" else None
    if total is not None:
        assert calls["n"] == total - 1  # every batch but the kept one
    assert 0 < calls["n"]
    assert_same(resumed, full)


@pytest.mark.parametrize("kind", SPECS, ids=list(SPECS))
def test_interrupted_after_the_first_trait_then_resumed_equals_an_uninterrupted_run(
        toy, traits, tmp_path, monkeypatch, kind):
    spec = _spec(**SPECS[kind])
    full = extract.run(toy, traits, spec, progress=False)
    calls = _interrupt(monkeypatch, passes, "read_residuals", at=10**9)
    extract.run(toy, traits, spec, progress=False)
    per_trait = calls["n"] // (2 * len(spec.elicitation))  # residual batches of one (variant, trait)
    calls["n"], calls["at"] = 0, per_trait + 1  # the first batch of the second trait
    partial = extract.run(toy, traits, spec, progress=False)
    assert partial.attrs["completed"] == 0
    first = partial.isel(model=0, checkpoint=0)
    if "elicitation" in first.dims:
        first = first.isel(elicitation=0)
    assert first.outcome.values.tolist() == ["extracted", ""]
    np.testing.assert_array_equal(first.vector.sel(trait="pirate").values,
                                  full.isel(model=0, checkpoint=0).vector.sel(trait="pirate").values
                                  if "elicitation" not in full.dims else
                                  full.isel(model=0, checkpoint=0, elicitation=0).vector.sel(trait="pirate").values)
    partial = _through_a_file(partial, tmp_path)
    gen = _interrupt(monkeypatch, passes, "generate_with_edit", at=10**9)
    calls["n"], calls["at"] = 0, 10**9
    resumed = extract.run(toy, traits, spec, progress=False, previous=partial)
    assert calls["n"] == per_trait * (2 * len(spec.elicitation) - 1)  # the first trait's residuals not recomputed
    if kind == "one variant":
        assert gen["n"] == 0  # every answer was kept
    assert_same(resumed, full)


def test_cli_keeps_an_interrupted_extraction_resumes_it_and_refuses_a_changed_argument(tmp_path, monkeypatch):
    out = tmp_path / "v.nc"
    args = ["vectors", "extract", "--model", "toy", "--traits", "pirate,robot", "--layers", "2,4", "--n-questions", "2",
            "--n-tokens", "10", "--batch-size", "3", "--elicitation", "instruction,character", "--no-progress"]
    real_checkpoint = Checkpoint.__init__

    def every_time(self, path, every_s=60.0):
        real_checkpoint(self, path, every_s=0.0)

    monkeypatch.setattr(Checkpoint, "__init__", every_time)
    calls = _interrupt(monkeypatch, passes, "generate_with_edit", at=4)
    result = CliRunner().invoke(main, [*args, "--out", str(out)])
    assert result.exit_code == 130 and "kept the finished part" in result.output, result.output
    partial = load_dataset(out)
    assert partial.attrs["completed"] == 0 and 0 < partial.generated.values.sum() < partial.sizes["sample"]
    changed = CliRunner().invoke(main, [*[a if a != "10" else "12" for a in args], "--out", str(out)])
    assert changed.exit_code == 1 and "differs from this run in n_tokens" in changed.output, changed.output
    assert load_dataset(out).generated.values.sum() == partial.generated.values.sum()  # untouched
    calls["n"], calls["at"] = 0, 10**9
    result = CliRunner().invoke(main, [*args, "--out", str(out)])
    assert result.exit_code == 0 and "resuming the unfinished run" in result.output, result.output
    resumed_calls, calls["n"] = calls["n"], 0
    fresh = tmp_path / "fresh.nc"
    assert CliRunner().invoke(main, [*args, "--out", str(fresh)]).exit_code == 0
    full_calls = calls["n"]
    assert 0 < resumed_calls < full_calls
    assert_same(load_dataset(out), load_dataset(fresh))
    # --fresh starts an unfinished run over instead of resuming it.
    third = tmp_path / "third.nc"
    calls["n"], calls["at"] = 0, 2
    assert CliRunner().invoke(main, [*args, "--out", str(third)]).exit_code == 130
    calls["n"], calls["at"] = 0, 10**9
    result = CliRunner().invoke(main, [*args, "--out", str(third), "--fresh"])
    assert result.exit_code == 0 and "resuming" not in result.output, result.output
    assert calls["n"] == full_calls
    assert_same(load_dataset(third), load_dataset(fresh))


def test_trace_resumes_an_interrupted_checkpoint_extraction(tmp_path, toy_dir, monkeypatch):
    import json
    import shutil

    folders = []
    for step in (5, 20):
        folder = tmp_path / f"ckpt-{step}"
        shutil.copytree(toy_dir, folder)
        (folder / "checkpoint.json").write_text(json.dumps({"step": step}))
        folders += ["--revision", str(folder)]
    args = ["vectors", "trace", *folders, "--traits", "pirate", "--layers", "2,4", "--steer-layer", "4", "--seeds", "0",
            "--n-questions", "2", "--n-tokens", "8", "--batch-size", "3", "--no-progress"]
    reference = tmp_path / "reference"
    calls = _interrupt(monkeypatch, passes, "generate_with_edit", at=10**9)
    assert CliRunner().invoke(main, [*args, "--out-dir", str(reference)]).exit_code == 0
    full, calls["n"], calls["at"] = calls["n"], 0, 2
    out = tmp_path / "trace"
    result = CliRunner().invoke(main, [*args, "--out-dir", str(out)])
    assert result.exit_code == 130 and "kept the finished part" in result.output, result.output
    assert load_dataset(out / "vectors-step-5.nc").attrs["completed"] == 0
    calls["n"], calls["at"] = 0, 10**9
    result = CliRunner().invoke(main, [*args, "--out-dir", str(out)])
    assert result.exit_code == 0 and "resuming the unfinished run" in result.output, result.output
    assert calls["n"] == full - 1  # every generation but the kept batch (the steering generates too)
    assert_same(load_dataset(out / "vectors-step-5.nc"), load_dataset(reference / "vectors-step-5.nc"))
    np.testing.assert_array_equal(load_dataset(out / "trace.nc").cos_matrix.values,
                                  load_dataset(reference / "trace.nc").cos_matrix.values)
