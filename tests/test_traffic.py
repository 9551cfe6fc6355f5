"""Requests and bytes both ways are counted on the remote path, the local simulation included."""

import dataclasses

import numpy as np

import nnsight_persona


def test_local_simulation_counts_the_bytes_it_returns(loaded_models, tiny_grid_file):
    remote = dataclasses.replace(loaded_models["gemma2"], remote="local")
    layers, positions = (1, 3), ("p_last", "g2")
    ds = nnsight_persona.capture(remote, grid=str(tiny_grid_file), layers=list(layers), positions=list(positions),
                                 batch_size=8, progress=False)
    attrs = ds.attrs
    assert attrs["completed"] == 1 and attrs["backend"] == "local simulation of the remote path"
    # What must have come back: the residuals (every condition, float32) and the continuation's ids.
    residuals = ds.resid.size * 4
    tokens = ds.continuation_ids.size * 8
    received = attrs["remote_bytes_received"]
    # torch.save adds about a kilobyte a saved value; the greedy continuation sends the prompt's ids too.
    print(f"requests {attrs['remote_requests']}, sent {attrs['remote_bytes_sent']}, received {received}, "
          f"float32 payload {residuals}")
    assert residuals + tokens <= received <= 2 * (residuals + tokens) + 16_384 * attrs["remote_requests"]
    assert np.isfinite(ds.resid.values).all()


def test_a_local_run_records_no_traffic_but_its_forwards(loaded_models, tiny_grid_file):
    local = loaded_models["qwen2"]
    ds = nnsight_persona.capture(local, grid=str(tiny_grid_file), layers=[0, 2], batch_size=8, progress=False)
    assert "remote_requests" not in ds.attrs
    assert ds.attrs["token_layer_forwards"] > 0


def test_a_session_carries_unsaved_values_between_traces_in_the_local_simulation(loaded_models):
    """What remote-native substitution needs (issue 26, part 3): residuals read in some traces of a
    session, combined between traces and written in a later one, never leave the server; only the
    saved reduction comes back. The remote-native sweeps (studies/xu2026/native.py) rest on it;
    tests/test_ndif.py runs the same session on the loopback NDIF server."""
    import torch

    from nnsight_persona.core.traffic import metered, result_bytes

    lm = loaded_models["gemma2"].lm
    prompts = [torch.tensor([[5, 6, 7, 8]]), torch.tensor([[9, 10, 11, 12]]), torch.tensor([[13, 14, 15, 16]])]

    def run(remote):
        with metered() as traffic:
            with lm.session(remote=remote):
                residuals = []  # never saved
                for ids in prompts:
                    with lm.trace(ids):
                        residuals.append(lm.model.layers[1].output[:, -1].clone())
                vector = residuals[0] + (residuals[1] - residuals[2])
                with lm.trace(prompts[2]):
                    lm.model.layers[1].output[:, -1] = vector
                    score = lm.output.logits[:, -1].log_softmax(-1).sum().save()
                with lm.trace(prompts[2]):
                    clean = lm.output.logits[:, -1].log_softmax(-1).sum().save()
        return score, clean, traffic

    local_score, local_clean, _ = run(False)
    score, clean, traffic = run("local")
    assert abs(float(score) - float(local_score)) <= 1e-5 * abs(float(local_score))
    assert abs(float(score) - float(clean)) > 1e-3  # the carried vector was written
    assert traffic.requests == 1
    assert traffic.bytes_received == result_bytes({"score": score, "clean": clean})  # nothing else came back
