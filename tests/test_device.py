"""Where the weights go: the device choice, its errors, and (on a machine with a GPU) every
experiment on the GPU giving the CPU's numbers."""

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from nnsight_persona.cli import main
from nnsight_persona.core.errors import ModelError
from nnsight_persona.studies.xu2026 import capture, inject, knockout, markers, substitute
from nnsight_persona.core.grids import load_grid
from nnsight_persona.models.loading import load_model, resolve_device
from tolerances import RESIDUAL, assert_close_per_vector


def test_auto_picks_a_gpu_only_where_there_is_one():
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device(None) == resolve_device("auto")
    assert resolve_device("cpu") == "cpu"
    with pytest.raises(ModelError, match="unknown device 'gpu0'.*'cuda:N'"):
        resolve_device("gpu0")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_a_missing_gpu_is_one_clear_error(tiny_dirs):
    with pytest.raises(ModelError, match="device 'cuda' is not available here"):
        resolve_device("cuda")
    result = CliRunner().invoke(main, ["capture", "--model", str(tiny_dirs["llama"]), "--device", "cuda:1"])
    assert result.exit_code != 0 and "device 'cuda:1' is not available here" in result.output
    assert "Traceback" not in result.output


def test_cpu_placement_keeps_the_weights_on_the_cpu(tiny_dirs):
    loaded = load_model(str(tiny_dirs["llama"]), device="cpu")
    assert {p.device.type for p in loaded.lm._module.parameters()} == {"cpu"}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_every_experiment_on_the_gpu_gives_the_cpu_numbers(tiny_dirs, tiny_grid_file, family):
    grid = load_grid(tiny_grid_file)
    results = {}
    for device in ("cpu", "cuda"):
        loaded = load_model(str(tiny_dirs[family]), dtype="float32", device=device)
        assert {p.device.type for p in loaded.lm._module.parameters()} == {device}
        cap = capture.run(loaded, grid, capture.CaptureSpec(grid="tiny", layers=(1, 2, 4)), progress=False)
        sub = substitute.run(loaded, grid, substitute.SubstituteSpec(grid="tiny", layers=(1, 2)), capture_ds=cap,
                             progress=False)
        mk = markers.run(loaded, grid, markers.MarkersSpec(grid="tiny", layer=2, n_tokens=6), capture_ds=cap,
                         progress=False)
        ko = knockout.run(loaded, grid, knockout.KnockoutSpec(grid="tiny", bands=((0, 2), (0, 4)), n_tokens=6),
                          capture_ds=cap, progress=False)
        inj = inject.run(loaded, grid, inject.InjectSpec(grid="tiny", layer_sets=((1,), (1, 2)), patch_steps="all"),
                         capture_ds=cap, progress=False)
        results[device] = (cap, sub, mk, ko, inj)
    (cap, sub, mk, ko, inj), (gcap, gsub, gmk, gko, ginj) = results["cpu"], results["cuda"]
    assert (cap.continuation_ids.values == gcap.continuation_ids.values).all()
    assert_close_per_vector(gcap.resid.values, cap.resid.values, RESIDUAL)
    # The default tiny models' KLs are all below ~2e-3 (tests/README.md): one scale, elementwise.
    np.testing.assert_allclose(gsub.kl.values, sub.kl.values, atol=1e-3)
    np.testing.assert_allclose(gko.kl.values, ko.kl.values, atol=1e-3)
    np.testing.assert_allclose(ginj.kl.values, inj.kl.values, atol=1e-3)
    assert (gmk.text.values == mk.text.values).all() and (gko.text.values == ko.text.values).all()
