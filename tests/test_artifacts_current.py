"""The committed results are what the current code computes.

Each committed folder under artifacts/ has a MANIFEST.json (commit, command, file hashes); its
files must be the ones hashed. Then one cell of every experiment in artifacts/toy/ is recomputed
with the current code, with the spec recorded in the committed file, and compared with the file:
a change to a computation that was not followed by `reproduce` fails here.
"""

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from nnsight_persona.storage.manifest import file_hashes, read_manifest
from nnsight_persona.storage.store import load_dataset, spec_of
from tolerances import RESIDUAL, SCORES, assert_close_per_vector

pytestmark = pytest.mark.numeric  # two computations of one quantity (.ci/run reruns these under other rounding)

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = sorted(p for p in (ROOT / "artifacts").iterdir() if p.is_dir())
TOY = ROOT / "artifacts" / "toy"


@pytest.mark.parametrize("folder", FOLDERS, ids=[f.name for f in FOLDERS])
def test_manifest_matches_the_files(folder):
    manifest = read_manifest(folder)
    assert manifest["command"].startswith("nnsight-persona reproduce")
    # Made from a committed state of the code (outputs under artifacts/ do not count as changes).
    assert manifest["git_commit"] not in ("", "unknown") and not manifest["git_commit"].endswith("+dirty")
    assert manifest["files"] == file_hashes(folder), "files changed after the manifest was written"
    assert any(name.endswith(".nc") for name in manifest["files"])


@pytest.fixture(scope="module")
def toy():
    from nnsight_persona.models.loading import load_model

    return load_model("toy", device="cpu")


def _spec(cls, ds, **override):
    """The experiment spec recorded in a committed file, as its dataclass (lists back to tuples)."""
    recorded = spec_of(ds)
    as_tuple = lambda v: tuple(as_tuple(x) for x in v) if isinstance(v, list) else v
    kwargs = {f.name: as_tuple(recorded[f.name]) for f in dataclasses.fields(cls) if f.name in recorded}
    return cls(**{**kwargs, **override})


def _grid(ds):
    from nnsight_persona.core.grids import grid_from_dict

    spec = spec_of(ds)
    return grid_from_dict(spec["grid_definition"], name=spec["grid"]) if "grid_definition" in spec else None


def _committed(name):
    path = TOY / name
    if not path.exists():
        pytest.skip(f"{name} is not among the committed toy results")
    return load_dataset(path)


def _first_cell(ds):
    return str(ds.cell.values[0])


def test_capture_and_substitute_recompute_to_the_committed_numbers(toy):
    from nnsight_persona.studies.xu2026 import capture, substitute

    committed = _committed("substitute-toy.nc")
    cell = _first_cell(committed)
    grid = _grid(committed)
    spec = _spec(substitute.SubstituteSpec, committed, cells=(cell,))
    ds = substitute.run(toy, grid, spec, progress=False)
    got = ds.kl.isel(model=0).values
    want = committed.kl.isel(model=0).sel(cell=[cell]).values
    # recomputed on this CPU against a file made on another: relative to the norm (tolerances.py)
    assert_close_per_vector(got, want, SCORES, axis=None)
    cap_committed = _committed("capture-toy.nc")
    cap = capture.run(toy, grid, _spec(capture.CaptureSpec, cap_committed, cells=(cell,)), progress=False)
    assert_close_per_vector(cap.resid.isel(model=0).values, cap_committed.resid.isel(model=0).sel(cell=[cell]).values,
                            RESIDUAL)
    np.testing.assert_array_equal(cap.continuation_ids.values, cap_committed.continuation_ids.sel(cell=[cell]).values)


def test_decompose_is_the_committed_capture_decomposed():
    from nnsight_persona.analysis import decompose

    committed = _committed("decompose-toy.nc")
    fresh = decompose(_committed("capture-toy.nc"))
    for name in ("cos_xy_sum", "cos_x_y", "inter_over_xy"):
        np.testing.assert_allclose(fresh[name].values, committed[name].values, rtol=1e-5, atol=1e-6)


def test_markers_recompute_to_the_committed_texts(toy):
    from nnsight_persona.studies.xu2026 import markers

    committed = _committed("markers-toy.nc")
    cell = _first_cell(committed)
    ds = markers.run(toy, _grid(committed), _spec(markers.MarkersSpec, committed, cells=(cell,)), progress=False)
    assert ds.text.isel(model=0).values.tolist() == committed.text.isel(model=0).sel(cell=[cell]).values.tolist()


def test_inject_and_knockout_recompute_to_the_committed_numbers(toy):
    from nnsight_persona.studies.xu2026 import inject, knockout

    for name, module, cls in (("inject-toy-long.nc", inject, inject.InjectSpec),
                              ("knockout-toy-long.nc", knockout, knockout.KnockoutSpec)):
        committed = _committed(name)
        cell = _first_cell(committed)
        ds = module.run(toy, _grid(committed), _spec(cls, committed, cells=(cell,)), progress=False)
        for variable in ("kl", "kl_site"):
            if variable in committed:
                assert_close_per_vector(ds[variable].isel(model=0).values,
                                        committed[variable].isel(model=0).sel(cell=[cell]).values,
                                        SCORES, axis=None, what=f"{name}: {variable}")


def test_persona_vectors_recompute_to_the_committed_numbers(toy):
    from nnsight_persona.studies.vectors import extract
    from nnsight_persona.studies.vectors.traits import trait_from_spec

    committed = _committed("vectors-extract.nc")
    definition = spec_of(committed)["trait_definitions"][0]
    trait = trait_from_spec(definition)
    spec = _spec(extract.ExtractSpec, committed, traits=(trait.name,), trait_definitions=(definition,))
    ds = extract.run(toy, [trait], spec, progress=False)
    mine = committed.sample_trait.values == trait.name
    assert ds.answer.isel(model=0, checkpoint=0).values.tolist() == \
        committed.answer.isel(model=0, checkpoint=0).values[mine].tolist()
    assert_close_per_vector(ds.vector.values, committed.vector.sel(trait=[trait.name]).values, RESIDUAL)
