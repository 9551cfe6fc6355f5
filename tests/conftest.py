import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tiny_models import FAMILIES, build_sharp_model, build_tiny_model  # noqa: E402


def _torch_numerics_state() -> dict:
    """The process-wide torch settings that change how float32 results round."""
    import torch

    return {"threads": torch.get_num_threads(), "grad": torch.is_grad_enabled(),
            "deterministic": torch.are_deterministic_algorithms_enabled(),
            "matmul precision": torch.get_float32_matmul_precision(), "default dtype": torch.get_default_dtype(),
            "fp32 precision": getattr(torch.backends, "fp32_precision", None)}


@pytest.fixture(autouse=True)
def _no_test_changes_torch_numerics():
    """A test that leaves a global torch setting changed would change the rounding of every later
    test, so that a comparison passes alone and fails in the full run: fail the test that leaks it."""
    before = _torch_numerics_state()
    yield
    after = _torch_numerics_state()
    changed = {k: (before[k], after[k]) for k in before if before[k] != after[k]}
    assert not changed, f"this test left torch settings changed (before, after): {changed}"


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory):
    """One tiny random model folder (weights, tokenizer, chat template) per family."""
    root = tmp_path_factory.mktemp("tiny")
    return {family: build_tiny_model(family, root / family) for family in FAMILIES}


@pytest.fixture(scope="session")
def loaded_models(tiny_dirs):
    from nnsight_persona.models.loading import load_model

    return {family: load_model(str(path), dtype="float32") for family, path in tiny_dirs.items()}


@pytest.fixture(params=sorted(FAMILIES))
def family(request):
    return request.param


@pytest.fixture(scope="session")
def sharp_dirs(tmp_path_factory):
    """Tiny random models with sharp logits (patches move KL by nats), one per family."""
    root = tmp_path_factory.mktemp("sharp")
    return {family: build_sharp_model(family, root / family) for family in FAMILIES}


@pytest.fixture(scope="session")
def sharp_models(sharp_dirs):
    from nnsight_persona.models.loading import load_model

    return {family: load_model(str(path), dtype="float32") for family, path in sharp_dirs.items()}


@pytest.fixture(scope="session")
def sharp_plain(sharp_dirs):
    """The same sharp models through plain transformers, for the independent references."""
    from reference import load_plain

    return {family: load_plain(path) for family, path in sharp_dirs.items()}


@pytest.fixture(scope="session")
def toy_dir():
    from nnsight_persona.models.toy import TOY_MODEL_DIR

    return TOY_MODEL_DIR


@pytest.fixture(scope="session")
def toy_model(toy_dir):
    """The embedded toy persona model: trained, so its patches move KL by nats."""
    from nnsight_persona.models.loading import load_model

    return load_model("toy", dtype="float32")


@pytest.fixture(scope="session")
def toy(toy_dir):
    """The toy model on the CPU, beside `plain` (the persona-vector tests compare the two)."""
    from nnsight_persona.models.loading import load_model

    return load_model("toy", device="cpu")


@pytest.fixture(scope="session")
def plain(toy_dir):
    from reference import load_plain

    return load_plain(toy_dir)


@pytest.fixture(scope="session")
def toy_plain(toy_dir):
    from reference import load_plain

    return load_plain(toy_dir)


def bundled_grid_raw(name: str) -> dict:
    """A bundled grid as plain YAML (what the references build their prompts from)."""
    import yaml

    return yaml.safe_load((Path(__file__).parents[1] / "nnsight_persona" / "grids" / f"{name}.yaml").read_text())


@pytest.fixture(scope="session")
def toy_grid_raw():
    return bundled_grid_raw("toy")


@pytest.fixture(scope="session")
def toy_long_grid_raw():
    return bundled_grid_raw("toy-long")


TINY_GRID = (
    "baseline: {persona: a thoughtful person, task: Give advice.}\n"
    "personas:\n  yoda: Yoda\n  engineer: a senior software engineer with 10 years of experience who avoids single points of failure\n"
    "tasks:\n  haiku: Write a haiku about Monday mornings.\n  book: Recommend a book.\n"
    "markers:\n  yoda: [hmm, force]\n  engineer: [reliab*, failure]\n"
)


@pytest.fixture
def tiny_grid_file(tmp_path):
    """A 2 x 2 grid with prompts of unequal lengths, so batches really are padded."""
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_GRID)
    return path


@pytest.fixture(scope="session")
def tiny_grid_raw():
    import yaml

    return yaml.safe_load(TINY_GRID)
