"""The hand_dapg repository's original files, read without mjrl, on pickles written in their structure."""
import pickle
import sys
import types

import numpy as np
import pytest
import torch
from torch import nn

from o2o.data.build.hand_dapg import door_demonstrations, expert_policy
from o2o.errors import DatasetError


@pytest.fixture
def mjrl_classes():
    """mjrl's two classes, defined under their module names for pickling, and removed again before loading."""
    names = ["mjrl", "mjrl.policies", "mjrl.policies.gaussian_mlp", "mjrl.utils", "mjrl.utils.fc_network"]
    modules = {name: types.ModuleType(name) for name in names}

    class MLP:  # mjrl.policies.gaussian_mlp.MLP keeps its network in .model and a log_std parameter
        pass

    class FCNetwork(nn.Module):  # mjrl.utils.fc_network.FCNetwork: fc_layers, tanh, in/out transformations
        pass

    for cls, module in ((MLP, "mjrl.policies.gaussian_mlp"), (FCNetwork, "mjrl.utils.fc_network")):
        cls.__module__, cls.__qualname__ = module, cls.__name__
        setattr(modules[module], cls.__name__, cls)
    sys.modules.update(modules)
    yield MLP, FCNetwork
    for name in names:
        sys.modules.pop(name, None)


def write_policy(path, MLP, FCNetwork, obs_dim=39, act_dim=28, hidden=(32, 32)):
    torch.manual_seed(0)
    net = FCNetwork()
    sizes = (obs_dim, *hidden, act_dim)
    net.fc_layers = nn.ModuleList([nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:])])
    net.nonlinearity, net.obs_dim, net.act_dim, net.layer_sizes = torch.tanh, obs_dim, act_dim, sizes
    net.in_shift, net.in_scale = torch.randn(obs_dim), torch.rand(obs_dim) + 0.5
    net.out_shift, net.out_scale = torch.randn(act_dim), torch.rand(act_dim) + 0.5
    policy = MLP()
    policy.n, policy.m, policy.min_log_std = obs_dim, act_dim, -3
    policy.model, policy.old_model = net, net
    policy.log_std = nn.Parameter(torch.full((act_dim,), -1.5))
    policy.log_std_val = np.full(act_dim, -1.5)
    policy.trainable_params = list(net.parameters()) + [policy.log_std]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(policy))
    return net, policy


def test_an_mjrl_policy_pickle_reads_as_the_arrays(tmp_path, mjrl_classes):
    net, policy = write_policy(tmp_path / "hand_dapg" / "dapg" / "policies" / "door-v0.pickle", *mjrl_classes)
    for name in [n for n in sys.modules if n.startswith("mjrl")]:
        del sys.modules[name]  # no mjrl when reading
    arrays = expert_policy(tmp_path / "hand_dapg", "door")
    for i, layer in enumerate(net.fc_layers):
        np.testing.assert_allclose(arrays[f"W{i}"], layer.weight.detach().numpy(), rtol=1e-6)
        np.testing.assert_allclose(arrays[f"b{i}"], layer.bias.detach().numpy(), rtol=1e-6)
    for name in ("in_shift", "in_scale", "out_shift", "out_scale"):
        np.testing.assert_allclose(arrays[name], getattr(net, name).numpy(), rtol=1e-6)
    np.testing.assert_allclose(arrays["log_std"], -1.5)
    assert set(arrays) == {"W0", "b0", "W1", "b1", "W2", "b2", "in_shift", "in_scale", "out_shift", "out_scale", "log_std"}
    # the builder's policy computes the network's mean action from them
    from o2o.data.build.adroit import DapgPolicy

    obs = np.random.default_rng(0).normal(size=39)
    x = (torch.as_tensor(obs, dtype=torch.float32) - net.in_shift) / (net.in_scale + 1e-8)
    for layer in net.fc_layers[:-1]:
        x = torch.tanh(layer(x))
    expected = net.fc_layers[-1](x) * net.out_scale + net.out_shift
    mean = DapgPolicy(arrays, np.random.default_rng(0)).mean(obs)
    np.testing.assert_allclose(mean, expected.detach().numpy(), rtol=1e-4, atol=1e-5)


def test_the_demonstrations_pickle_reads_as_the_arrays(tmp_path):
    rng = np.random.default_rng(1)
    demos = [{"observations": rng.normal(size=(n, 39)), "actions": rng.normal(size=(n, 28)), "rewards": rng.normal(size=n),
              "init_state_dict": {"qpos": np.zeros(30), "qvel": np.zeros(30), "door_body_pos": np.zeros(3)}}
             for n in (4, 6)]
    folder = tmp_path / "dapg" / "demonstrations"
    folder.mkdir(parents=True)
    (folder / "door-v0_demos.pickle").write_bytes(pickle.dumps(demos))
    arrays = door_demonstrations(tmp_path)
    assert arrays["episode_lengths"].tolist() == [4, 6]
    np.testing.assert_array_equal(arrays["observations"], np.concatenate([d["observations"] for d in demos]))
    np.testing.assert_array_equal(arrays["rewards"], np.concatenate([d["rewards"] for d in demos]))
    assert door_demonstrations(tmp_path / "dapg" / "demonstrations") is not None  # the folder itself works too
    assert door_demonstrations(tmp_path / "nothing") is None


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "ran"

    class Exploit:
        def __reduce__(self):
            import os

            return os.system, (f"touch {marker}",)

    folder = tmp_path / "dapg" / "policies"
    folder.mkdir(parents=True)
    (folder / "door-v0.pickle").write_bytes(pickle.dumps(Exploit()))
    with pytest.raises(DatasetError, match="not part of a hand_dapg asset"):
        expert_policy(tmp_path, "door")

    class HiddenInAStorage:  # the same, inside the bytes torch pickles a storage as
        def __reduce__(self):
            import io

            inner = io.BytesIO()
            torch.save(Exploit(), inner, _use_new_zipfile_serialization=True)
            return torch.storage._load_from_bytes, (inner.getvalue(),)

    (folder / "door-v0.pickle").write_bytes(pickle.dumps(HiddenInAStorage()))
    with pytest.raises(DatasetError, match="cannot be read as a hand_dapg asset"):
        expert_policy(tmp_path, "door")
    assert not marker.exists()


def test_missing_assets_name_both_layouts(tmp_path):
    with pytest.raises(DatasetError, match="neither door-v0_expert_policy.npz nor hand_dapg's dapg/policies/door-v0.pickle"):
        expert_policy(tmp_path, "door")
