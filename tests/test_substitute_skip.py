"""The substitution sweep that skips the blocks below each patch's layer equals the sweep that runs
every block, and the one that runs whole sequences (no prefix cache), for every condition, mixed
cells and positions, on the toy model (KLs of nats) and on every tiny architecture."""

import numpy as np
import pytest

from nnsight_persona.studies.xu2026 import substitute
from nnsight_persona.core.grids import load_grid
from tolerances import SCORES, assert_close_per_vector

pytestmark = pytest.mark.numeric  # two computations of one quantity (.ci/run reruns these under other rounding)

POSITIONS = ("p_user_last", "p_last", "g1", "g2")


def _three_ways(loaded, grid, grid_name, layers, cells=()):
    make = lambda **kw: substitute.SubstituteSpec(grid=grid_name, layers=layers, positions=POSITIONS, cells=cells,
                                                  batch_size=7, **kw)
    skipping = substitute.run(loaded, grid, make(), progress=False)
    every_block = substitute.run(loaded, grid, make(skip_layers=False), capture_ds=None, progress=False)
    whole = substitute.run(loaded, grid, make(prefix_cache=False), progress=False)
    return skipping.kl.values, every_block.kl.values, whole.kl.values


@pytest.fixture(scope="module")
def toy():
    from nnsight_persona.models.loading import load_model

    return load_model("toy", device="cpu")


def test_skipping_equals_running_every_block_on_the_toy(toy):
    grid = load_grid("toy")
    layers = (0, 2, 5, toy.n_layers)  # the embeddings, inner layers, the last block's output
    cells = tuple(c.label for c in grid.cells[:5])  # prompts of several lengths in one chunk
    skipping, every_block, whole = _three_ways(toy, grid, "toy", layers, cells)
    assert np.isfinite(skipping).all() and skipping.max() > 1.0  # large enough to tell right from wrong
    assert_close_per_vector(skipping, every_block, SCORES, axis=None)
    assert_close_per_vector(skipping, whole, SCORES, axis=None)


def test_skipping_equals_running_every_block_on_each_architecture(loaded_models, family, tiny_grid_file):
    grid = load_grid(tiny_grid_file)
    loaded = loaded_models[family]
    skipping, every_block, whole = _three_ways(loaded, grid, "tiny", (1, 2, loaded.n_layers))
    # These random models' KLs are 1e-7..1e-3 nats: agreement to float32 noise (a few 1e-6), while
    # the toy test above is the one with numbers large enough to tell a wrong skip from a right one.
    # A KL this small is a difference of nearly equal log-probabilities, whose rounding is absolute
    # (about 1e-7 each), not relative to the KL: an absolute floor, elementwise (tests/README.md).
    np.testing.assert_allclose(skipping, every_block, rtol=1e-3, atol=5e-6)
    np.testing.assert_allclose(skipping, whole, rtol=1e-3, atol=5e-6)


def test_skipping_runs_only_the_blocks_at_and_above_the_layer(toy, monkeypatch):
    """Count block forwards: a patch at layer L costs its suffix's rows in blocks L and up only."""
    grid = load_grid("toy")
    calls = {}
    # A skipped block's own forward hook still fires (it returns the replacement); its MLP's does not.
    hooks = [block.mlp.register_forward_hook(lambda m, i, o, k=k: calls.__setitem__(k, calls.get(k, 0) + 1))
             for k, block in enumerate(toy.lm._module.model.layers)]
    try:
        spec = substitute.SubstituteSpec(grid="toy", layers=(6,), positions=("p_last",), conditions=("additive",),
                                         cells=(grid.cells[0].label,))
        capture_ds = substitute.capture_exp.run(toy, grid, substitute.capture_exp.CaptureSpec(
            grid="toy", layers=(6,), positions=("p_last",), cells=(grid.cells[0].label,)), progress=False)
        calls.clear()
        substitute.run(toy, grid, spec, capture_ds=capture_ds, progress=False)
    finally:
        for h in hooks:
            h.remove()
    # The clean pass runs every block (in two pieces, split at the prefix), the patched batch only
    # blocks 6 and 7.
    assert calls[0] == calls[5] and calls[6] == calls[7] == calls[0] + 1, calls
