import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


@pytest.fixture(scope="session", autouse=True)
def isolated_environment(tmp_path_factory):
    """No network, and datasets, MLflow store and outputs in a temporary folder."""
    base = tmp_path_factory.mktemp("o2o")
    saved = dict(os.environ)
    os.environ.update({
        "HF_HUB_OFFLINE": "1",
        "MINARI_DATASETS_PATH": str(base / "minari"),
        "OGBENCH_DATASETS_PATH": str(base / "ogbench"),
        "O2O_OUTPUTS": str(base / "outputs"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{base / 'outputs' / 'mlflow.db'}",
        "OMP_NUM_THREADS": "1",
    })
    (base / "outputs").mkdir()
    yield base
    os.environ.clear()
    os.environ.update(saved)


# every algorithm option, discovered: a new algorithm's YAML joins every test that iterates over algorithms
ALGOS = sorted(p.stem for p in (ROOT / "conf" / "algo").glob("*.yaml"))
SMOKE_ANY_ENV = ["experiment=smoke", "threads=1"]
SMOKE = [*SMOKE_ANY_ENV, "env.dataset.collector.steps=1500"]  # the PointMaze default collects a small dataset


def compose(overrides=()):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    from o2o.config import register_schema

    register_schema()
    with initialize_config_module("o2o_conf", version_base="1.3"):
        return hydra_compose("config", overrides=list(overrides))


def algo_config(algo: str, **fields):
    """The validated config of ``algo=<algo>`` (pointmaze domain) with some fields replaced, for unit tests."""
    from o2o.config import validate

    cfg = validate(compose([f"algo={algo}"])).algo
    for key, value in fields.items():
        assert hasattr(cfg, key), f"{algo} has no field {key}"
        setattr(cfg, key, value)
    return cfg


@pytest.fixture
def main_py():
    return [sys.executable, str(ROOT / "src" / "main.py")]


def plain_q(critic, member, s, a):
    """One member of an EnsembleCritic on one (s, a), layer by layer (LayerNorm where the critic has it)."""
    import torch
    import torch.nn.functional as F

    x = torch.cat([s, a])
    last = len(critic.weights) - 1
    for layer, (w, b) in enumerate(zip(critic.weights, critic.biases)):
        x = x @ w[member] + b[member, 0]
        if layer < last:
            after = getattr(critic, "norm_after_activation", False)
            if after:
                x = torch.relu(x)
            if critic.layer_norm:
                x = F.layer_norm(x, x.shape) * critic.norm_scales[layer][member, 0] + critic.norm_shifts[layer][member, 0]
            if not after:
                x = torch.relu(x)
    return x[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def mlflow_server(backend_uri: str, log_path: Path, artifacts: Path | None = None):
    """A real ``mlflow server`` on loopback (artifacts proxied through it when ``artifacts`` is given); yields its URL."""
    port = free_port()
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_uri,
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    if artifacts is not None:
        cmd += ["--artifacts-destination", str(artifacts)]
    server = subprocess.Popen(cmd, stdout=open(log_path, "w"), stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            try:
                if urllib.request.urlopen(f"{base}/health", timeout=2).status == 200:
                    break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    pytest.fail("mlflow server did not answer: " + log_path.read_text()[-2000:])
                time.sleep(0.5)
        yield base
    finally:
        server.terminate()
        server.wait(timeout=30)


FAILING_AGENT = """
import os
import signal
from dataclasses import dataclass

from o2o.agents.cql import CQL, CQLConfig
from o2o.agents.registry import register


@dataclass
class FailingConfig(CQLConfig):
    pass


@register("{name}", FailingConfig)
class Failing(CQL):
    def update(self, batch):
        {update}
"""
FAILING_YAML = """
defaults:
  - cql
  - override /schema/algo@_here_: {name}
  - _self_

name: {name}
"""
HOW_THEY_FAIL = {
    "exploding": 'raise RuntimeError("this algorithm fails on its first update, on purpose")',
    # as the OOM killer or a lost node ends a job: no result, no traceback
    "killed": "os.kill(os.getpid(), signal.SIGKILL)",
}


def exploding_algorithm(folder: Path, name: str = "exploding") -> Path:
    """A config folder (for O2O_CONFIG_PATH) with ``algo=<name>``: CQL whose first update fails, inside its work where
    no check before it can see it: ``exploding`` raises, ``killed`` kills its own process."""
    (folder / "algo").mkdir(parents=True, exist_ok=True)
    (folder / "algo" / f"{name}.py").write_text(FAILING_AGENT.format(name=name, update=HOW_THEY_FAIL[name]))
    (folder / "algo" / f"{name}.yaml").write_text(FAILING_YAML.format(name=name))
    return folder
