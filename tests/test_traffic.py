"""Requests and bytes both ways are counted on the remote path, the local simulation included."""

import dataclasses

import numpy as np

import nnsight_persona


def test_local_simulation_counts_the_bytes_it_returns(loaded_models, tiny_grid_file):
    remote = dataclasses.replace(loaded_models["gemma2"], remote="local")
    layers, positions = (1, 3), ("p_last", "g2")
    ds = nnsight_persona.substitute(remote, grid=str(tiny_grid_file), layers=list(layers), positions=list(positions),
                                    batch_size=8, progress=False)
    attrs = ds.attrs
    assert attrs["completed"] == 1 and attrs["backend"] == "local simulation of the remote path"
    # What must have come back: the built-in capture's residuals (every condition, float32) and the KLs.
    n_cells = ds.sizes["cell"]
    residuals = len(layers) * len(positions) * n_cells * 4 * remote.hidden_size * 4
    kls = ds.kl.size * 4
    received = attrs["remote_bytes_received"]
    # torch.save adds about a kilobyte a saved value; the greedy continuation sends its token ids.
    print(f"requests {attrs['remote_requests']}, sent {attrs['remote_bytes_sent']}, received {received}, "
          f"float32 payload {residuals + kls}")
    assert residuals + kls <= received <= 2 * (residuals + kls) + 16_384 * attrs["remote_requests"]
    assert attrs["remote_bytes_sent"] > ds.kl.size * remote.hidden_size * 4 * 5 / 6  # the patched vectors
    assert np.isfinite(ds.kl.values).all()


def test_a_local_run_records_no_traffic_but_its_forwards(loaded_models, tiny_grid_file):
    local = loaded_models["qwen2"]
    ds = nnsight_persona.capture(local, grid=str(tiny_grid_file), layers=[0, 2], batch_size=8, progress=False)
    assert "remote_requests" not in ds.attrs
    assert ds.attrs["token_layer_forwards"] > 0
