"""What a run can check before it loads any weights: the model's config (layers, family, dtype),
the fingerprint of its weights, and whether a capture file is the right input for it.

Everything here reads config files, grids and result files only, so bad input fails in seconds
instead of after a model has loaded.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

from ..core.errors import ModelError, SelectionError


class ModelPlan:
    """A model to be loaded: what is known from its config alone (n_layers, hidden_size, family,
    dtype) and the fingerprint of its weights (`revision`, computed when first asked for), with
    `load()` to load it once. Other attributes are those of the loaded model (they load it)."""

    def __init__(self, spec: str, dtype: str | None = None, remote: bool | str = False, device: str | None = "auto"):
        from transformers import AutoConfig

        from . import loading as models

        if dtype is not None and dtype not in models.DTYPES:
            raise ModelError(f"unknown dtype {dtype!r}; allowed: {list(models.DTYPES)}")
        self.model_id, self.remote, self.device = spec, remote, device
        self.path = models.resolve_model_path(spec)
        try:
            config = AutoConfig.from_pretrained(self.path)
        except Exception as exc:  # noqa: BLE001 - the models module words this error for users
            models.load_model(spec, dtype=dtype, remote=remote, device=device)
            raise ModelError(f"cannot read the config of model {spec!r}: {exc}") from None
        text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
        self.family = getattr(config, "model_type", "?")
        self.dtype = dtype or models.DEFAULT_DTYPE.get(self.family, "float32")
        self.n_layers = int(text_config.num_hidden_layers)
        self.hidden_size = int(text_config.hidden_size)
        self._loaded = None

    @cached_property
    def revision(self) -> str:
        """What the loaded model will report as its revision: a fingerprint of the weights of a
        local folder, the hub revision otherwise."""
        from .loading import _local_revision

        return _local_revision(self.path)

    @property
    def is_loaded(self) -> bool:
        return self._loaded is not None

    def load(self):
        """The loaded model (loaded on the first call); checked against what the config said."""
        if self._loaded is None:
            from . import loading as models

            loaded = models.load_model(self.model_id, dtype=self.dtype, remote=self.remote, device=self.device)
            expected = {"n_layers": self.n_layers, "dtype": self.dtype}
            if "revision" in self.__dict__:
                expected["revision"] = self.revision
            got = {k: getattr(loaded, k) for k in expected}
            if got != expected:
                raise ModelError(f"model {self.model_id!r} loaded as {got}, not {expected} as its config said")
            self._loaded = loaded
        return self._loaded

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.load(), name)


def check_capture_agrees(capture_ds, capture_path: Path, given: dict) -> None:
    """Refuse options given together with --capture that disagree with the capture: `given` maps
    '--model', '--grid', '--dtype' to what the user gave (absent: not given)."""
    from ..core.grids import load_grid
    from .loading import resolve_model_path
    from ..storage.store import spec_of

    model_id = capture_ds.attrs.get("model_id")
    if "--model" in given and given["--model"] != model_id:
        if resolve_model_path(given["--model"]) != resolve_model_path(model_id):
            raise SelectionError(
                f"--model {given['--model']} disagrees with {capture_path}, made with model {model_id!r}; "
                "leave --model out (the capture's model is used) or give the capture's"
            )
    if "--grid" in given:
        spec = spec_of(capture_ds)
        if load_grid(given["--grid"]).to_dict() != spec.get("grid_definition"):
            raise SelectionError(
                f"--grid {given['--grid']} disagrees with {capture_path}, made on grid {spec.get('grid')!r} "
                "(other personas, tasks or template); leave --grid out (the capture's grid is used)"
            )
    if "--dtype" in given and given["--dtype"] != capture_ds.attrs.get("dtype"):
        raise SelectionError(
            f"--dtype {given['--dtype']} disagrees with {capture_path}, made in {capture_ds.attrs.get('dtype')}; "
            "leave --dtype out (the capture's dtype is used)"
        )


def check_capture_weights(capture_ds, capture_path: Path, plan: ModelPlan) -> None:
    """Refuse a capture made with other weights than the model's today (a local folder whose weights
    changed since): its residuals would not be this model's."""
    theirs = capture_ds.attrs.get("model_revision")
    if theirs is not None and theirs != plan.revision:
        raise SelectionError(
            f"{capture_path} was made with other weights of model {plan.model_id!r} (fingerprint {theirs}, "
            f"now {plan.revision}): the model changed since; rerun the capture"
        )
