"""`vectors trace` with transfer: each checkpoint's vector also steers the final checkpoint, scaled
by the ratio of the two checkpoints' residual norms. Two checkpoints that really differ (the toy,
and a copy whose block-1 MLP output is tripled, so residual norms at later layers differ): the
transferred steering at the final checkpoint is its own steering, and the ratio is the one of the
two checkpoints' residual norms computed here with plain transformers (output_hidden_states)."""

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from nnsight_persona.cli import main
from nnsight_persona.studies.vectors.traits import load_trait
from nnsight_persona.storage.store import load_dataset
from reference import hidden_states, load_plain

LAYER = 4


def _checkpoint(src, folder, step, scale=None):
    shutil.copytree(src, folder)
    (folder / "checkpoint.json").write_text(json.dumps({"step": step}))
    if scale:
        weights = load_file(folder / "model.safetensors")
        weights["model.layers.1.mlp.down_proj.weight"] = weights["model.layers.1.mlp.down_proj.weight"] * scale
        save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


@pytest.fixture(scope="module")
def traced(tmp_path_factory, toy_dir):
    root = tmp_path_factory.mktemp("transfer")
    early = _checkpoint(toy_dir, root / "ckpt-5", 5, scale=3.0)
    final = _checkpoint(toy_dir, root / "ckpt-20", 20)
    out = root / "trace"
    args = ["vectors", "trace", "--revision", str(early), "--revision", str(final), "--traits", "pirate",
            "--layers", "2,4", "--steer-layer", str(LAYER), "--seeds", "0", "--keep", "all", "--coef", "1.0",
            "--n-questions", "2", "--n-tokens", "10", "--batch-size", "8", "--out-dir", str(out), "--no-progress"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return {"out": out, "folders": {5: early, 20: final}}


def _plain_resid_norm(folder, vectors_path, layer):
    """Mean over the extraction's answered samples of the mean |hidden_states[layer]| over answer
    tokens, by plain transformers on prompt + the recorded answer ids."""
    model = load_plain(folder)
    tok = model_tokenizer(folder)
    ds = load_dataset(vectors_path).isel(model=0, checkpoint=0)
    trait = load_trait("pirate")
    norms = []
    for s in ds.sample.values:
        row = ds.sel(sample=s)
        answer = [int(t) for t in row.answer_ids.values if t >= 0]
        if not answer:
            continue
        messages = trait.messages(str(row.side.values), int(row.pair), trait.extract_questions[int(row.question_index)])
        text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = tok(text, add_special_tokens=False).input_ids
        h = hidden_states(model, ids + answer)[layer][len(ids):]
        norms.append(float(h.norm(dim=-1).mean()))
    return float(np.mean(norms))


def model_tokenizer(folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


def test_transferred_steering_at_the_final_checkpoint_is_its_own(traced):
    out = traced["out"]
    ds = load_dataset(out / "trace.nc")
    assert ds.target.values.tolist() == ["own", "final"]
    final = ds.isel(checkpoint=-1)
    for name in ("delta_trait", "delta_coherence", "p_signflip", "p_signflip_greater", "p_sign", "p_bonferroni"):
        np.testing.assert_array_equal(final[name].sel(target="final").values, final[name].sel(target="own").values,
                                      err_msg=name)
    own, moved = load_dataset(out / "steer-step-20.nc"), load_dataset(out / "steer-step-20-on-final.nc")
    assert moved.text.values.tolist() == own.text.values.tolist()
    np.testing.assert_allclose(moved.added_norm.values, own.added_norm.values, rtol=1e-6)
    assert float(ds.transfer_ratio.isel(checkpoint=-1).squeeze()) == pytest.approx(1.0, abs=1e-12)
    # The early checkpoint's vector steers the final model: a different run from its own steering.
    early_own, early_moved = load_dataset(out / "steer-step-5.nc"), load_dataset(out / "steer-step-5-on-final.nc")
    assert early_moved.baseline_text.values.tolist() == own.baseline_text.values.tolist()  # the final model's
    assert early_moved.baseline_text.values.tolist() != early_own.baseline_text.values.tolist()
    assert (out / "trace-steering.png").exists()


def test_transfer_scales_by_the_ratio_of_the_two_checkpoints_residual_norms(traced):
    out, folders = traced["out"], traced["folders"]
    r_early = _plain_resid_norm(folders[5], out / "vectors-step-5.nc", LAYER)
    r_final = _plain_resid_norm(folders[20], out / "vectors-step-20.nc", LAYER)
    want = r_final / r_early
    assert abs(np.log(want)) > 0.1  # the two checkpoints' norms differ enough to tell the ratio from its inverse
    ds = load_dataset(out / "trace.nc")
    assert float(ds.transfer_ratio.isel(checkpoint=0).squeeze()) == pytest.approx(want, rel=1e-4)
    # What the transfer added: the early vector's own steering (and each control's) times the ratio.
    own, moved = load_dataset(out / "steer-step-5.nc"), load_dataset(out / "steer-step-5-on-final.nc")
    assert own.kind.values.tolist() == moved.kind.values.tolist() == ["vector", "random_s0", "shuffled_s0"]
    np.testing.assert_allclose(moved.added_norm.values, own.added_norm.values * want, rtol=1e-4)
    assert float(own.added_norm.sel(kind="vector").max()) > 1.0
