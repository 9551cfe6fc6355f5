"""`plan` against measured runs: on tiny random models of two families, for every experiment, local
and through the local simulation of the remote path, the plan's requests and token-layer-forwards
equal the counted ones and its bytes up and down are within 20% of the measured ones."""

import dataclasses
import json

import pytest
from click.testing import CliRunner

import nnsight_persona
from nnsight_persona.cli import main
from nnsight_persona.studies.xu2026.plan import plan

# Each experiment's options, small enough to run in about a second on a tiny model.
EXPERIMENTS = {
    "capture": {"layers": "1,3"},
    "substitute": {"layers": "1,3", "positions": "p_last,g2"},
    "markers": {"layers": "2", "n_tokens": 6, "patch_steps": "all"},
    "inject": {},
    "knockout": {"bands": "0:2,0:4", "n_tokens": 5},
    "heads": {"band": "0:2"},
}


def _measured(loaded, experiment, grid, options, mode):
    model = dataclasses.replace(loaded, remote=mode or False)
    return getattr(nnsight_persona, experiment)(model, grid=grid, batch_size=8, progress=False, ndif_host=mode,
                                                **options).attrs


@pytest.mark.parametrize("mode", [None, "local"], ids=["local", "remote-local"])
@pytest.mark.parametrize("experiment", sorted(EXPERIMENTS))
@pytest.mark.parametrize("family", ["gemma2", "qwen2"])
def test_plan_equals_the_measured_run(tiny_dirs, loaded_models, tiny_grid_file, family, experiment, mode):
    options = EXPERIMENTS[experiment]
    planned = plan(experiment, str(tiny_dirs[family]), grid=str(tiny_grid_file), batch_size=8, ndif_host=mode,
                   dtype="float32", **options)["total"]
    measured = _measured(loaded_models[family], experiment, str(tiny_grid_file), options, mode)
    assert planned["token_layer_forwards"] == measured["token_layer_forwards"] > 0
    if mode is None:
        assert planned["requests"] == planned["bytes_up"] == planned["bytes_down"] == 0
        assert "remote_requests" not in measured
        return
    assert planned["requests"] == measured["remote_requests"] > 0
    for plan_key, run_key in (("bytes_up", "remote_bytes_sent"), ("bytes_down", "remote_bytes_received")):
        ratio = planned[plan_key] / measured[run_key]
        assert 0.8 <= ratio <= 1.2, f"{plan_key}: plan {planned[plan_key]} vs measured {measured[run_key]}"


def test_a_built_in_capture_is_a_step_of_its_own(tiny_dirs, tiny_grid_file):
    """Locally a built-in capture is a step; remotely only the clean continuation is (its token
    ids), the residuals being read on the server in the sweep's own sessions."""
    local = plan("substitute", str(tiny_dirs["llama"]), grid=str(tiny_grid_file), batch_size=8, layers="1,3",
                 positions="p_last")
    assert {s["step"] for s in local["steps"]} == {"capture (built in)", "substitute"}
    result = plan("substitute", str(tiny_dirs["llama"]), grid=str(tiny_grid_file), batch_size=8, ndif_host="local",
                  layers="1,3", positions="p_last")
    steps = {s["step"]: s for s in result["steps"]}
    assert set(steps) == {"continuation (built in)", "substitute"}
    assert all(steps[name]["requests"] > 0 for name in steps)
    assert result["total"]["requests"] == sum(s["requests"] for s in steps.values())
    # The sweep's sessions run the capture passes too: more forwards than the local sweep's patches alone.
    assert steps["substitute"]["passes"] > steps["continuation (built in)"]["passes"]


def test_plan_command_on_a_shipped_config_writes_json(tmp_path):
    out = tmp_path / "plan.json"
    result = CliRunner().invoke(main, ["plan", "substitute", "--model", "meta-llama/Llama-3.1-8B-Instruct",
                                       "--grid", "xu2026-short", "--remote", "--device-memory", "80GB",
                                       "--json", str(out)])
    assert result.exit_code == 0, result.output
    planned = json.loads(out.read_text())
    assert planned["n_layers"] == 32 and planned["hidden_size"] == 4096
    assert "stand-in" in planned["tokenizer"] and "shipped config" in planned["config"]
    total = planned["total"]
    # The vectors are built on the server: what goes up weighs less than one float32 vector of the
    # model's width per patch (what the sweep sent before), and no residual comes down.
    spec = planned["spec"]
    patches = len(spec["layers"]) * len(spec["positions"]) * len(spec["conditions"]) * 12  # 12 cells
    assert total["bytes_up"] < patches * 4096 * 4
    assert total["bytes_down"] < 12 * 4 * 4096 * 4  # less than one residual per cell and condition
    auto = planned["batch_size_auto"]
    assert auto["remote"] == 32 and auto["local"] >= 1 and auto["device_memory_bytes"] == 80 * 10**9
    assert "requests" in result.output and "--batch-size auto" in result.output


def test_plan_refuses_bad_input(tiny_dirs):
    from nnsight_persona.core.errors import ModelError, SelectionError

    with pytest.raises(SelectionError, match="device memory"):
        plan("capture", str(tiny_dirs["llama"]), device_memory="lots")
    with pytest.raises(ModelError, match="shipped configs"):
        plan("capture", "no-such-org/no-such-model")
    result = CliRunner().invoke(main, ["plan", "capture", "--model", str(tiny_dirs["llama"]), "--n-eval", "3"])
    assert result.exit_code != 0 and "not an option of capture" in result.output
