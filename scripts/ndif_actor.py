"""A CPU model actor for a local NDIF server (selected by NDIF_MODEL_IMPORT_PATH=ndif_actor.CPUModelDeployment).

NDIF's default actor places weights on the GPUs Ray assigned it and calls CUDA throughout. On a
machine without a GPU, Ray is told it has one (see scripts/ndif_local.py) and this actor loads the
model on the CPU instead and turns the CUDA calls into no-ops. Imported by the Ray workers of the
server's own venv (scripts/ is on their PYTHONPATH), never by the project.
"""

import ray
import torch
from ndif.services.ray.deployments.modeling.base import BaseModelDeployment
from nnsight.modeling.huggingface import HuggingFaceModel

CUDA_CALLS = ("synchronize", "empty_cache", "set_device", "reset_peak_memory_stats",
              "set_per_process_memory_fraction")


@ray.remote(num_cpus=1, max_restarts=-1)
class CPUModelDeployment(BaseModelDeployment):
    """BaseModelDeployment with the weights on the CPU, loaded from a hub id or a shared folder."""

    def __init__(self, *args, **kwargs):
        # Here, not at import time: the worker process rebuilds this class from what Ray pickled
        # and need not run this module's top level.
        for name in CUDA_CALLS:
            setattr(torch.cuda, name, lambda *a, **k: None)
        BaseModelDeployment.__init__(self, *args, **kwargs)

    def load_from_disk(self) -> HuggingFaceModel:
        model = HuggingFaceModel.from_model_key(self.model_key, dispatch=True, dtype=self.dtype_name, **self.kwargs)
        model._module.requires_grad_(False)
        return model
