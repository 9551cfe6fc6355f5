"""Every experiment through nnsight's local simulation of the remote path equals the local run."""

import dataclasses

import numpy as np
import pytest

from nnsight_persona.studies.xu2026 import capture, inject, knockout, markers, substitute
from nnsight_persona.core.grids import load_grid
from tolerances import RESIDUAL, assert_close_per_vector

pytestmark = pytest.mark.numeric  # two computations of one quantity (.ci/run reruns these under other rounding)


@pytest.fixture(scope="module")
def both(loaded_models):
    local = loaded_models["gemma2"]
    return local, dataclasses.replace(local, remote="local")


def _equal(a, b, var):
    # The local substitution sweep reuses prefix KV caches, the remote one cannot: float noise.
    if a[var].dims[-1:] == ("hidden",):
        assert_close_per_vector(b[var].values, a[var].values, RESIDUAL, what=var)
    elif a[var].dtype.kind in "fc":  # a default tiny model's KLs and scores: all below ~2e-3, one scale
        np.testing.assert_allclose(a[var].values, b[var].values, atol=1e-5, rtol=1e-4)
    else:
        assert (a[var].values == b[var].values).all()


@pytest.mark.parametrize(
    "module, make_spec, variables",
    [
        (capture, lambda: capture.CaptureSpec(grid="tiny", layers=(0, 2, 4)), ["resid", "continuation_ids"]),
        (substitute, lambda: substitute.SubstituteSpec(grid="tiny", layers=(1, 3), positions=("p_last", "g2")), ["kl"]),
        (markers, lambda: markers.MarkersSpec(grid="tiny", layer=2, n_tokens=6, patch_steps="all"), ["text", "any_marker"]),
        (inject, lambda: inject.InjectSpec(grid="tiny", layer_sets=((2,), (1, 3)), site_layers=(2,)), ["kl", "kl_site"]),
        (knockout, lambda: knockout.KnockoutSpec(grid="tiny", bands=((0, 2), (0, 4)), n_tokens=5), ["kl", "text"]),
    ],
    ids=["capture", "substitute", "markers", "inject", "knockout"],
)
def test_remote_local_equals_local(both, tiny_grid_file, module, make_spec, variables):
    local, remote = both
    grid = load_grid(tiny_grid_file)
    a = module.run(local, grid, make_spec(), progress=False)
    b = module.run(remote, grid, make_spec(), progress=False)
    assert a.attrs["completed"] == b.attrs["completed"] == 1
    for var in variables:
        _equal(a, b, var)
