"""``python src/main.py ... schedule=smoke`` runs every stage and leaves a complete MLflow run."""
import os
import subprocess

import pytest
from mlflow.tracking import MlflowClient

from conftest import SMOKE


def runs_of(algo):
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("o2o-e2e")
    return client, client.search_runs([experiment.experiment_id], f"tags.algo = '{algo}'")


@pytest.mark.parametrize("algo", ["calql", "cql"])
def test_smoke_run_logs_every_stage(main_py, algo, tmp_path):
    proc = subprocess.run(main_py + [f"algo={algo}", "experiment=o2o-e2e", f"hydra.run.dir={tmp_path}/run", *SMOKE],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client, runs = runs_of(algo)
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.tags["env"] == "pointmaze_umaze" and run.data.tags["stage"] == "finished"
    assert run.data.tags["dataset"] == "o2o/pointmaze/umaze-waypoints-v0" and run.data.tags["seed"] == "0"
    assert run.data.params["algo.name"] == algo and run.data.params["schedule.offline_steps"] == "40"
    metrics = run.data.metrics
    for key in ("offline/train/critic_loss", "offline/train/cql_gap", "offline/train/q_data",
                "offline/train/mc_return", "offline/train/updates_per_second", "offline/eval/normalized_score",
                "offline/eval/success_rate", "online/train/critic_loss", "online/train/episode_return",
                "online/cumulative_regret", "online/train/grad_steps", "online/eval/normalized_score",
                "online/eval/success_rate"):
        assert key in metrics, key
    assert ("offline/train/calql_bound_rate" in metrics) == (algo == "calql")
    history = client.get_metric_history(run.info.run_id, "offline/train/critic_loss")
    assert [m.step for m in history] == [10, 20, 30, 40]
    online_steps = [m.step for m in client.get_metric_history(run.info.run_id, "online/eval/success_rate")]
    assert online_steps[-1] == 300
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "resolved_config.yaml" in artifacts
    assert [a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")] == ["checkpoints/final.pt"]
    assert (tmp_path / "run" / "checkpoints" / "final.pt").is_file()


def test_python_api_returns_final_metrics(tmp_path):
    from o2o import run

    final = run(env="pointmaze_umaze", algo="calql", run_dir=str(tmp_path),
                overrides=[*SMOKE, "experiment=o2o-api", "schedule.online_steps=100", "seed=3"])
    assert {"offline/normalized_score", "online/normalized_score", "online/cumulative_regret"} <= set(final)
    assert final["online/env_steps"] == 100
    assert 0.0 <= final["online/cumulative_regret"] <= 1.0
