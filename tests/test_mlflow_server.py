"""Runs on a real tracking server (``mlflow server``, sqlite backend, artifacts proxied over HTTP): params, metrics,
system metrics, dataset inputs, the policy models and artifacts are logged through it and read back; the
README's snippet loads the policy in a fresh process and acts like the agent."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from conftest import ROOT, SMOKE, compose, mlflow_server
from o2o import metrics as M
from o2o.lineage import OFFLINE_CONTEXT, ONLINE_CONTEXT, logged_datasets
from o2o.policy_model import POLICY, PRETRAINED_POLICY, logged_model_names

EXPERIMENT = "o2o-server"
REGISTERED = "o2o-smoke-policy"
DATASET = "o2o/pointmaze/umaze-waypoints-v0"


def smoke_run(url: str, run_dir, minari, *overrides):
    env = {**os.environ, "MLFLOW_TRACKING_URI": url, "MINARI_DATASETS_PATH": str(minari)}
    proc = subprocess.run([sys.executable, str(ROOT / "src" / "main.py"), *SMOKE, f"mlflow_experiment={EXPERIMENT}",
                           "progress=false", f"hydra.run.dir={run_dir}", *overrides],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return (run_dir / "mlflow_run_id").read_text().strip()


@pytest.fixture(scope="module")
def server_runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("server")
    with mlflow_server(f"sqlite:///{base / 'server.db'}", base / "server.log", artifacts=base / "artifacts") as url:
        main = smoke_run(url, base / "main", base / "minari", "mlflow.system_metrics_interval_s=1",
                         f"mlflow.registered_model={REGISTERED}")
        # other data (the collector's seed), and the extras switched off
        other = smoke_run(url, base / "other", base / "minari-other", "env.dataset.collector.seed=1",
                          "mlflow.log_models=false", "mlflow.system_metrics=false")
        yield url, MlflowClient(url), main, other, base


def test_params_metrics_and_artifacts_go_through_the_server(server_runs):
    url, client, main, _, base = server_runs
    run = client.get_run(main)
    assert run.info.status == "FINISHED" and not run.info.artifact_uri.startswith("/")  # proxied: mlflow-artifacts:/
    assert run.data.params["algo.name"] == "calql" and run.data.params["mlflow.registered_model"] == REGISTERED
    assert M.final(M.summary(M.ONLINE, M.SUCCESS_RATE)) in run.data.metrics
    history = client.get_metric_history(main, M.evaluation(M.ONLINE, M.SUCCESS_RATE))
    assert history[-1].step == 300
    artifacts = {a.path for a in client.list_artifacts(main)}
    assert {"resolved_config.yaml", "checkpoints", "plots"} <= artifacts
    config = client.download_artifacts(main, "resolved_config.yaml", str(base))
    assert "calql" in open(config).read()


def test_system_metrics_are_recorded_and_can_be_switched_off(server_runs):
    _, client, main, other, _ = server_runs
    system = [k for k in client.get_run(main).data.metrics if k.startswith("system/")]
    assert "system/cpu_utilization_percentage" in system and "system/system_memory_usage_megabytes" in system
    assert len(client.get_metric_history(main, "system/cpu_utilization_percentage")) >= 2  # sampled each second
    assert not any(k.startswith("system/") for k in client.get_run(other).data.metrics)


def test_offline_and_online_data_are_dataset_inputs_that_tell_runs_apart(server_runs):
    _, client, main, other, base = server_runs
    inputs = logged_datasets(client, main)
    offline, online = inputs[OFFLINE_CONTEXT], inputs[ONLINE_CONTEXT]
    assert offline["name"] == DATASET and offline["source_type"] == "local"
    assert offline["source"]["uri"] == str(base / "minari" / DATASET)
    assert offline["profile"]["transitions"] == int(client.get_run(main).data.params["data.transitions"])
    assert online["name"] == "pointmaze_umaze-online" and online["profile"]["transitions"] == 300
    other_offline = logged_datasets(client, other)[OFFLINE_CONTEXT]
    assert other_offline["name"] == DATASET and other_offline["digest"] != offline["digest"]  # same id, other data
    experiment = client.get_experiment_by_name(EXPERIMENT).experiment_id
    found = client.search_runs([experiment], f"dataset.digest = '{offline['digest']}' and dataset.context = 'offline'")
    assert [r.info.run_id for r in found] == [main]


def test_the_policies_are_logged_as_models_and_registered(server_runs):
    _, client, main, other, _ = server_runs
    assert logged_model_names(client, main) == {POLICY, PRETRAINED_POLICY}
    assert logged_model_names(client, other) == set()
    (version,) = client.search_model_versions(f"name = '{REGISTERED}'")
    assert version.run_id == main and version.status == "READY"


def readme_snippet() -> str:
    text = (ROOT / "README.md").read_text()
    return re.search(r"<!-- policy-snippet -->\s*```python\n(.*?)```", text, re.S).group(1)


def test_the_readme_snippet_loads_the_policy_in_a_fresh_process_and_acts_like_the_agent(server_runs):
    from o2o.config import validate
    from o2o.pipeline import make_agent

    url, client, main, _, base = server_runs
    snippet = readme_snippet().replace("<run id>", main)
    probe = np.random.default_rng(0).normal(size=(16, 6)).astype(np.float32)  # PointMaze: 6-dim flat observations
    np.save(base / "probe.npy", probe)
    check = (f"\nprobe = np.load({str(base / 'probe.npy')!r})\n"
             "print(json.dumps({'last_obs': flat.tolist(), 'last_action': action.tolist(),\n"
             "                  'probe': policy.predict(probe).tolist(),\n"
             f"                  'registered': mlflow.pyfunc.load_model('models:/{REGISTERED}/1').predict(probe).tolist()}}))\n")
    env = {**os.environ, "MLFLOW_TRACKING_URI": url}
    proc = subprocess.run([sys.executable, "-c", "import json\n" + snippet + check], env=env, capture_output=True,
                          text=True, timeout=300, cwd=base)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])

    cfg = validate(compose([*SMOKE]))
    agent = make_agent(cfg, 6, 2, torch.device("cpu"))
    agent.restore(torch.load(base / "main" / "checkpoints" / "final.pt", weights_only=False)["agent"])
    expected = np.stack([agent.act(o, deterministic=True) for o in probe])
    np.testing.assert_allclose(out["probe"], expected, atol=1e-5)
    np.testing.assert_allclose(out["registered"], expected, atol=1e-5)
    np.testing.assert_allclose(out["last_action"], agent.act(np.asarray(out["last_obs"]), deterministic=True), atol=1e-5)
