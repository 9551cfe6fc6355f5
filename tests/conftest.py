import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tiny_models import FAMILIES, build_sharp_model, build_tiny_model  # noqa: E402


def torch_settings() -> dict:
    """The process-wide torch settings that change how later computations round or run."""
    import torch

    return {
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "default_dtype": str(torch.get_default_dtype()),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "mkldnn": torch.backends.mkldnn.enabled,
        "grad": torch.is_grad_enabled(),
    }


@pytest.fixture(autouse=True)
def torch_settings_unchanged():
    """A test (or the package code it runs) that leaves a global torch setting changed makes every
    later test compute differently: a thread count splits matmul reductions another way, and two
    computations compared later round apart by more than they do alone. Such a test fails here,
    naming the setting, instead of a later test failing only in the full run."""
    before = torch_settings()
    yield
    after = torch_settings()
    changed = {k: (before[k], after[k]) for k in before if before[k] != after[k]}
    assert not changed, f"the test left torch settings changed (before, after): {changed}"


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
