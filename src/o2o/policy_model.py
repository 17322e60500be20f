"""A run's policy as an MLflow model that anyone with MLflow can load and act with.

The actor's deterministic action (what evaluation uses) is exported with
``torch.export`` and logged as a pyfunc "model from code"
(``policy_model_code.py``): ``mlflow.pyfunc.load_model("runs:/<run>/policy")``
in any process with torch and mlflow returns a model whose ``predict`` maps a
float32 observation batch (n, obs_dim), or for image observations a uint8 frame batch (n, H, W, C), to actions
(n, act_dim). Its signature
says so, its input example is an observation of the env, and its metadata
names the env and the observation layout, so it can act without this project
(README, "The trained policy"). The export is fp32 whatever
``precision`` the run trained in.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import os
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)

POLICY, PRETRAINED_POLICY, RETRAINED_POLICY = "policy", "pretrained_policy", "retrained_policy"  # runs:/<run_id>/<name>
CODE = Path(__file__).with_name("policy_model_code.py")


class DeterministicPolicy(nn.Module):
    """obs (n, obs_dim) float32, or frames (n, H, W, C) uint8 -> the actor's deterministic action (n, act_dim), as
    the agent acts in evaluation."""

    def __init__(self, actor: nn.Module):
        super().__init__()
        self.actor = actor

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.actor.act(obs.reshape(obs.shape[0], -1), True, None)


def export_policy(policy: DeterministicPolicy, example_obs: np.ndarray, path: Path) -> None:
    """``policy`` as a ``torch.export`` program with a dynamic batch size, for observations like ``example_obs``
    (one batch of them)."""
    example = torch.zeros(2, *example_obs.shape[1:], dtype=torch.as_tensor(example_obs).dtype)
    program = torch.export.export(policy, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, str(path))


def _requirements() -> list[str]:
    import mlflow

    return [f"mlflow=={mlflow.__version__}", f"torch=={torch.__version__.split('+')[0]}", f"numpy=={np.__version__}"]


def logged_model_names(client, run_id: str) -> set[str]:
    """The names of the run's finished (READY) models. A job killed inside ``Model.log`` leaves its model linked to
    the run but PENDING, without its files: that one does not count, so the rerun exports it again."""
    from mlflow.entities import LoggedModelStatus
    from mlflow.exceptions import MlflowException

    outputs = client.get_run(run_id).outputs
    names = set()
    for output in outputs.model_outputs if outputs else []:
        try:
            model = client.get_logged_model(output.model_id)
        except MlflowException:  # deleted by the export that replaced it
            continue
        if model.status == LoggedModelStatus.READY:
            names.add(model.name)
    return names


def remove_unfinished_models(client, experiment_id: str, run_id: str, name: str) -> None:
    """A job killed while exporting ``name`` left its logged model PENDING (created, never finished): the export
    that follows replaces it, so that the run has one model of that name, READY."""
    from mlflow.entities import LoggedModelStatus

    found = client.search_logged_models(experiment_ids=[experiment_id],
                                        filter_string=f"source_run_id = '{run_id}' AND name = '{name}'")
    for model in found:
        if model.status == LoggedModelStatus.PENDING:
            client.delete_logged_model(model.model_id)


def log_policy(client, run_id: str, actor: nn.Module, example_obs: np.ndarray, name: str, step: int,
               metadata: dict, registered_model: Optional[str] = None) -> None:
    """Log ``actor`` as the pyfunc model ``name`` of the run (once: a rerun that finds it logged does nothing)."""
    import mlflow
    from mlflow.models import Model, infer_signature

    if name in logged_model_names(client, run_id):
        return
    frames = np.asarray(example_obs).dtype == np.uint8  # an image observation: a batch of frames (1, H, W, C)
    example = np.asarray(example_obs)[None] if frames else np.asarray(example_obs, dtype=np.float32).reshape(1, -1)
    with tempfile.TemporaryDirectory() as tmp, _quiet_mlflow():
        path = Path(tmp) / "policy.pt2"
        policy = DeterministicPolicy(copy.deepcopy(actor).cpu().float().eval())  # the run's actor stays as it is
        export_policy(policy, example, path)
        actions = policy(torch.as_tensor(example))
        experiment_id = client.get_run(run_id).info.experiment_id
        remove_unfinished_models(client, experiment_id, run_id, name)
        # created here so the model lives in the run's experiment (Model.log alone picks the active experiment)
        model = client.create_logged_model(experiment_id, name=name, source_run_id=run_id)
        Model.log(artifact_path=None, name=name, flavor=mlflow.pyfunc, run_id=run_id, model_id=model.model_id,
                  python_model=str(CODE), artifacts={"policy": str(path)}, step=step,
                  signature=infer_signature(example, actions.detach().numpy()), input_example=example,
                  pip_requirements=_requirements(), metadata=metadata, registered_model_name=registered_model)
    log.info("policy logged as MLflow model runs:/%s/%s%s", run_id, name,
             f" (registered as {registered_model})" if registered_model else "")


@contextlib.contextmanager
def _quiet_mlflow():
    """Model.log checks the input example by loading the model back: without its download bar."""
    before = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    try:
        yield
    finally:
        if before is None:
            del os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"]
        else:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = before


def policy_metadata(cfg, grad_steps: int) -> dict:
    """What a user needs to act in the env with the model: the env and how its observation is flattened."""
    env = cfg.env
    return {"algo": cfg.algo.name, "env": env.name, "gym_id": env.gym_id, "gym_kwargs": dict(env.gym_kwargs),
            "max_episode_steps": env.max_episode_steps, "obs_keys": list(env.obs_keys), "grad_steps": grad_steps,
            "observations": ("uint8 frames (n, H, W, C), as the env renders them" if cfg.encoder.name != "none"
                             else "float32 (n, obs_dim), obs_keys concatenated in order"),
            "action": "deterministic (tanh of the policy mean), in [-1, 1]"}
