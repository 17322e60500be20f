"""The data a run learned from, as MLflow dataset inputs (the runs table's Dataset column).

The offline data is logged when a run starts, with context ``offline``; the
run's own online transitions when fine-tuning ends, with context ``online``.
Each input carries its source (the Minari dataset's folder or the HDF5 file,
or, for online data, the fine-tuning that collected it), a digest of its content as the agent reads it
(after the observation layout and action clipping, before the reward
transform), its transition and episode counts (the profile) and its schema.
Runs on different data then differ in ``dataset.digest`` and can be found with
``search_runs(filter_string="dataset.digest = '...'")``.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import numpy as np

from o2o.tracking import retry_create_race

OFFLINE_CONTEXT, ONLINE_CONTEXT = "offline", "online"
DIGEST_CHARS = 16  # MLflow stores digests of up to 36 characters
DATA_DIGEST = "data.digest"  # the run param that keeps the offline data's content digest (offline_digest)


def digest(*arrays: np.ndarray) -> str:
    """A content digest of arrays: their shapes, dtypes and bytes."""
    h = hashlib.blake2b(digest_size=DIGEST_CHARS // 2)
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def _schema(obs_shape: tuple, act_dim: int, obs_dtype=np.float32):
    from mlflow.types import Schema, TensorSpec

    f32, flag, obs = np.dtype("float32"), np.dtype("bool"), np.dtype(obs_dtype)
    return Schema([TensorSpec(obs, (-1, *obs_shape), "observations"), TensorSpec(f32, (-1, act_dim), "actions"),
                   TensorSpec(f32, (-1,), "rewards"), TensorSpec(obs, (-1, *obs_shape), "next_observations"),
                   TensorSpec(flag, (-1,), "terminals"), TensorSpec(flag, (-1,), "timeouts")])


def _dataset(source, name: str, content_digest: str, obs_shape: tuple, act_dim: int, profile: dict[str, Any],
             obs_dtype=np.float32):
    """``obs_shape``: one observation's (the flat size, or an image's (H, W, C)), ``obs_dtype`` its type."""
    from mlflow.data.meta_dataset import MetaDataset

    class TransitionsDataset(MetaDataset):  # MetaDataset with a profile: counts shown beside the digest
        @property
        def profile(self):
            return profile

        def to_dict(self):
            return {**super().to_dict(), "profile": json.dumps(profile)}

    return TransitionsDataset(source, name=name, digest=content_digest, schema=_schema(obs_shape, act_dim, obs_dtype))


def offline_digest(data) -> str:
    """The offline data's content digest (``o2o.data.dataset.OfflineData``, as the agent reads it)."""
    return digest(data.observations, data.actions, data.rewards, data.next_observations, data.terminals,
                  data.timeouts)


def offline_dataset(data, env_cfg, content: str | None = None):
    """The offline data (``o2o.data.dataset.OfflineData``) as an MLflow dataset named by its Minari id or file
    (``content``: its :func:`offline_digest`, if already computed)."""
    from mlflow.data.dataset_source_registry import get_registered_sources

    from o2o.data.minari import minari_root

    local_source = next(s for s in get_registered_sources() if s._get_source_type() == "local")

    if env_cfg.dataset.id:
        name, location = env_cfg.dataset.id, os.path.join(minari_root(), env_cfg.dataset.id)
    elif env_cfg.dataset.ogbench:
        from o2o.data.ogbench import dataset_file

        name, location = env_cfg.dataset.ogbench, str(dataset_file(env_cfg.dataset.ogbench))
    else:
        name, location = os.path.basename(env_cfg.dataset.path), env_cfg.dataset.path
    content = content or offline_digest(data)
    profile = {"transitions": len(data), "episodes": data.num_episodes, "source": data.source}
    return _dataset(local_source(os.path.abspath(location)), name, content,
                    data.observations.shape[1:], data.actions.shape[1], profile, data.observations.dtype)


def online_dataset(buffer, env_name: str, episodes: int):
    """The online transitions a run collected (``o2o.buffers.TransitionBuffer``: rewards as stored, transformed)."""
    from mlflow.data.code_dataset_source import CodeDatasetSource

    b = buffer.batch()
    content = digest(*(t.cpu().numpy() for t in (b.obs, b.actions, b.rewards, b.next_obs)), b.dones.cpu().numpy() > 0.5)
    profile = {"transitions": len(buffer), "episodes": episodes, "source": "online fine-tuning"}
    # MLflow keeps one dataset per name and digest in an experiment: identical online data (same seed and config)
    # is one dataset, whichever run collected it first
    return _dataset(CodeDatasetSource({"o2o.collected_by": "online fine-tuning", "o2o.env": env_name}),
                    f"{env_name}-online", content, buffer.obs_shape, buffer.act_dim, profile, buffer.obs_dtype)


def log_dataset(client, run_id: str, dataset, context: str) -> None:
    """The dataset as an input of the run. Jobs on one store that log the same dataset at once race to create it
    (sqlite: UNIQUE constraint failed on datasets): the loser tries again and finds it."""
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    inputs = [DatasetInput(dataset._to_mlflow_entity(), [InputTag(MLFLOW_DATASET_CONTEXT, context)])]
    retry_create_race(lambda: client.log_inputs(run_id, inputs))


def logged_datasets(client, run_id: str) -> dict[str, dict[str, Any]]:
    """A run's dataset inputs by context: name, digest, source and profile, as MLflow stored them."""
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    found = {}
    for item in client.get_run(run_id).inputs.dataset_inputs:
        context = next((t.value for t in item.tags if t.key == MLFLOW_DATASET_CONTEXT), None)
        ds = item.dataset
        found[context] = {"name": ds.name, "digest": ds.digest, "source_type": ds.source_type,
                          "source": json.loads(ds.source), "profile": json.loads(ds.profile or "null")}
    return found
