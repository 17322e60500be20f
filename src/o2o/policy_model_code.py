"""MLflow "model from code" for a policy logged by o2o (see ``o2o.policy_model``); never imported by o2o.

MLflow copies this file into the logged model and runs it when the model is
loaded, so loading needs torch, numpy and mlflow only, not this project.
The policy itself is a ``torch.export`` program (``policy.pt2``): observation
batch (n, obs_dim) float32, or frames (n, H, W, C) uint8, in; deterministic action batch (n, act_dim) out.
"""
import numpy as np
import torch
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel


class ExportedPolicy(PythonModel):
    # the input is checked against the logged tensor signature; without this MLflow advises type hints at every load
    _skip_type_hint_validation = True

    def load_context(self, context):
        self.policy = torch.export.load(context.artifacts["policy"]).module()

    def predict(self, context, model_input, params=None):
        obs = np.asarray(model_input)
        if obs.dtype == np.uint8:  # frames: (H, W, C) or a batch of them
            obs = torch.as_tensor(obs.reshape(-1, *obs.shape[-3:]))
        else:
            obs = torch.as_tensor(obs.astype(np.float32, copy=False))
            obs = obs.reshape(-1, obs.shape[-1])
        with torch.no_grad():
            return self.policy(obs).numpy()


set_model(ExportedPolicy())
