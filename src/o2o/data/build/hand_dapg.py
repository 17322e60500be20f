"""The DAPG assets (aravindr93/hand_dapg: the expert policies and the human door demonstrations D4RL built its
Adroit data from), in either of two layouts under ``o2o-data build-adroit --assets DIR``:

- the original repository's files: ``dapg/policies/<task>-v0.pickle`` (a pickled ``mjrl.policies.gaussian_mlp.MLP``)
  and ``dapg/demonstrations/door-v0_demos.pickle`` (a plain list of trajectory dicts), DIR being the repository's
  root, its ``dapg/`` folder, or a folder holding the files themselves;
- the same numbers as plain NumPy arrays, ``<task>-v0_expert_policy.npz`` and ``door-v0_human_demos.npz`` (the
  layout of ``../shared/data/hand_dapg``, described in its README).

The policy pickles need mjrl's classes, which do not install on this stack. :class:`AssetUnpickler` maps them to
stand-ins that only hold the pickled attributes (an ``MLP``'s ``model``, an ``FCNetwork``'s linear layers and
input / output transformations, the ``log_std`` parameter), lets torch, NumPy and ``collections`` rebuild their
tensors, layers, arrays and dicts, and refuses every other name: a pickle cannot run code through it (tested). The arrays read from either layout are
the same: ``W0..W2`` and ``b0..b2`` as ``nn.Linear`` stores them (``W @ x + b``), ``in_shift``, ``in_scale``,
``out_shift``, ``out_scale`` and ``log_std``; the demonstrations' ``observations``, ``actions``, ``rewards`` and
``episode_lengths``.
"""
from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import torch
from torch import nn

from o2o.errors import DatasetError

POLICY_FILE, DEMO_FILE = "{task}-v0.pickle", "door-v0_demos.pickle"
POLICY_ARRAYS, DEMO_ARRAYS = "{task}-v0_expert_policy.npz", "door-v0_human_demos.npz"
REPOSITORY_FOLDERS = {"policy": ("dapg/policies", "policies", "."), "demos": ("dapg/demonstrations", "demonstrations", ".")}


class _Attributes:
    """A stand-in for a pickled mjrl object: it keeps the attributes it was pickled with, and does nothing."""

    def __setstate__(self, state):
        self.__dict__.update(state if isinstance(state, dict) else {})


class _Network(nn.Module):
    """A stand-in for ``mjrl.utils.fc_network.FCNetwork``: an ``nn.Module`` whose submodules and tensors unpickle."""


NONLINEARITIES = ("tanh", "relu", "sigmoid")  # an FCNetwork's nonlinearity, pickled by reference


def _safe_getattr(obj, name: str):
    """``getattr`` as a pickle may call it: only to reach a nonlinearity of torch (how torch.tanh pickles)."""
    if name not in NONLINEARITIES or not (obj is torch or str(getattr(obj, "__module__", "")).startswith("torch")):
        raise pickle.UnpicklingError(f"getattr({type(obj).__name__}, {name!r}) is not part of a hand_dapg asset")
    return getattr(obj, name)


def _storage_from_bytes(data: bytes):
    """A tensor storage pickled inside the asset, read by torch's weights-only loader (which runs no code)."""
    return torch.load(io.BytesIO(data), weights_only=True)


def _allowed(module: str, name: str) -> bool:
    """What rebuilds tensors, parameters, torch layers, NumPy arrays and ordered dicts, and nothing else."""
    return ((module == "collections" and name == "OrderedDict")
            or (module == "_codecs" and name == "encode")
            or (module == "torch._utils" and name.startswith("_rebuild"))
            or (module == "torch" and (name.endswith("Storage") or name in NONLINEARITIES))
            or (module == "torch._C" and name.startswith("_VariableFunctions"))
            or module.startswith("torch.nn.modules.") or (module == "torch.nn.parameter" and name == "Parameter")
            or (module.split(".")[0] == "numpy" and name in ("_reconstruct", "ndarray", "dtype", "scalar")))


class AssetUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if module == "mjrl.utils.fc_network" and name == "FCNetwork":
            return _Network
        if module.split(".")[0] == "mjrl":
            return _Attributes
        if module == "builtins" and name == "getattr":
            return _safe_getattr
        if module == "torch.storage" and name == "_load_from_bytes":  # torch's own runs torch.load(weights_only=False)
            return _storage_from_bytes
        if _allowed(module, name):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a hand_dapg asset; refusing to load it")


def _load_pickle(path: Path):
    try:
        with open(path, "rb") as f:
            return AssetUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, AttributeError, TypeError, ValueError) as err:
        raise DatasetError(f"{path} cannot be read as a hand_dapg asset ({type(err).__name__}: {err})") from None


def _find(assets: Path, kind: str, name: str) -> Path | None:
    for folder in REPOSITORY_FOLDERS[kind]:
        if (assets / folder / name).is_file():
            return assets / folder / name
    return None


def _numpy(value) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy().astype(np.float64)
    return np.asarray(value, dtype=np.float64)


def policy_from_pickle(path: Path) -> dict[str, np.ndarray]:
    """An mjrl Gaussian MLP policy as arrays."""
    policy = _load_pickle(path)
    model = getattr(policy, "model", None)
    linears = [m for m in getattr(model, "fc_layers", []) if isinstance(m, nn.Linear)] if model is not None else []
    log_std = getattr(policy, "log_std", None)
    if not linears or log_std is None:
        raise DatasetError(f"{path} is not an mjrl Gaussian MLP policy (no model.fc_layers or log_std)")
    out = {}
    for i, layer in enumerate(linears):
        out[f"W{i}"], out[f"b{i}"] = _numpy(layer.weight), _numpy(layer.bias)
    obs_dim, act_dim = out["W0"].shape[1], out[f"W{len(linears) - 1}"].shape[0]
    for name, size, default in (("in_shift", obs_dim, 0.0), ("in_scale", obs_dim, 1.0), ("out_shift", act_dim, 0.0),
                                ("out_scale", act_dim, 1.0)):
        value = getattr(model, name, None)
        out[name] = np.full(size, default) if value is None else _numpy(value).reshape(size)
    out["log_std"] = _numpy(log_std).reshape(act_dim)
    return out


def demos_from_pickle(path: Path) -> dict[str, np.ndarray]:
    """The hand_dapg demonstrations (a list of dicts with observations, actions, rewards) as flat arrays."""
    demos = _load_pickle(path)
    if not isinstance(demos, (list, tuple)) or not demos or not all(isinstance(d, dict) for d in demos):
        raise DatasetError(f"{path} is not a hand_dapg demonstrations file (a list of trajectory dicts)")
    try:
        return {"observations": np.concatenate([np.asarray(d["observations"], np.float64) for d in demos]),
                "actions": np.concatenate([np.asarray(d["actions"], np.float64) for d in demos]),
                "rewards": np.concatenate([np.asarray(d["rewards"], np.float64).reshape(-1) for d in demos]),
                "episode_lengths": np.asarray([len(d["observations"]) for d in demos])}
    except KeyError as err:
        raise DatasetError(f"{path}: a demonstration lacks {err}") from None


def expert_policy(assets: Path, task: str) -> dict[str, np.ndarray]:
    """The task's DAPG expert as arrays, from either layout (the arrays first)."""
    arrays = assets / POLICY_ARRAYS.format(task=task)
    if arrays.is_file():
        return dict(np.load(arrays))
    original = _find(assets, "policy", POLICY_FILE.format(task=task))
    if original is None:
        raise DatasetError(f"{assets} holds neither {arrays.name} nor hand_dapg's dapg/policies/"
                           f"{POLICY_FILE.format(task=task)}: point --assets at a clone of aravindr93/hand_dapg or at "
                           "a folder of the .npz arrays (../shared/data/hand_dapg)")
    return policy_from_pickle(original)


def door_demonstrations(assets: Path) -> dict[str, np.ndarray] | None:
    """The 25 human door demonstrations as arrays, or None when the assets have none."""
    arrays = assets / DEMO_ARRAYS
    if arrays.is_file():
        return dict(np.load(arrays))
    original = _find(assets, "demos", DEMO_FILE)
    return None if original is None else demos_from_pickle(original)
