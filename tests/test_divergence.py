"""A run whose losses or weights turn non-finite stops with one line, FAILED in MLflow, its last finite checkpoint kept."""
import os
import subprocess

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from conftest import ROOT, SMOKE, compose
from o2o.config import validate
from o2o.data.checks import check_finite
from o2o.data.offline_data import OfflineData
from o2o.errors import DatasetError

DIVERGING = [*SMOKE, "algo=calql", "algo.critic_lr=1e8", "algo.actor_lr=1e8", "schedule.offline_steps=400",
             "schedule.checkpoint_interval=10", "schedule.log_interval=10", "progress=false"]


def test_a_diverging_run_stops_failed_with_its_last_finite_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.run([os.sys.executable, str(ROOT / "src" / "main.py"), *DIVERGING, "mlflow_experiment=o2o-nan",
                           f"hydra.run.dir={run_dir}"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 3, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "diverged" in errors[0] and "Traceback" not in proc.stderr
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    run = client.search_runs([client.get_experiment_by_name("o2o-nan").experiment_id])[0]
    assert run.info.status == "FAILED" and "diverged" in run.data.tags["failure"]
    assert not (run_dir / "checkpoints" / "final.pt").exists()
    latest = run_dir / "checkpoints" / "latest.pt"
    # the line names the checkpoint only when one was written
    assert (f"the last finite checkpoint is kept: {latest}" in errors[0]) == latest.exists(), errors[0]
    assert latest.exists() or "no checkpoint was written before it" in errors[0]
    if latest.exists():  # a checkpoint before the divergence: finite weights only
        state = torch.load(latest, weights_only=False)
        assert all(torch.isfinite(v).all() for v in state["agent"]["model"].values() if torch.is_tensor(v))


def test_a_sweep_whose_failed_jobs_all_diverged_exits_3(tmp_path):
    """As a single diverged run does: the status says the failure is the runs' numbers, not the input (2)."""
    proc = subprocess.run([os.sys.executable, str(ROOT / "src" / "main.py"), "-m", *DIVERGING, "seed=0,1",
                           "mlflow_experiment=o2o-nan-sweep", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 3, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name("o2o-nan-sweep").experiment_id])
    assert sorted(r.info.status for r in runs) == ["FAILED"] * 3  # both jobs and their parent


def test_the_guard_can_be_turned_off():
    assert validate(compose(["divergence_guard=false"])).divergence_guard is False


@pytest.mark.parametrize("field", ["observations", "actions", "rewards", "next_observations"])
def test_non_finite_data_stops_loading_naming_the_field_and_count(field):
    n = 4
    data = OfflineData(np.zeros((n, 2), np.float32), np.zeros((n, 1), np.float32), np.zeros(n, np.float32),
                       np.zeros((n, 2), np.float32), np.zeros(n, bool), np.zeros(n, bool), source="minari:x")
    getattr(data, field)[:2] = np.nan
    with pytest.raises(DatasetError, match=rf"minari:x: 2 transitions with non-finite values \(NaN or inf\) in {field};"):
        check_finite(data)


def test_non_finite_weights_are_never_saved_or_evaluated(tmp_path):
    from conftest import algo_config
    from o2o.agents.cql import CQL
    from o2o.checkpoints import Checkpoints
    from o2o.errors import Diverged
    from o2o.run_state import RunState
    from o2o.stages.common import RunContext

    agent = CQL(3, 2, algo_config("calql", actor_hidden=[8], critic_hidden=[8]), torch.device("cpu"))
    ctx = RunContext(tracker=None, evaluator=None, schedule=None, checkpoints=Checkpoints(tmp_path),
                     state=RunState(config={}, run_id="x"))
    with torch.no_grad():
        agent.critic.weights[0][0, 0, 0] = float("nan")
    with pytest.raises(Diverged, match="parameters critic.weights.0 not finite; no checkpoint was written before it"):
        ctx.save(agent, "offline", [])
    with pytest.raises(Diverged):
        ctx.evaluate(agent, "offline", 10)
    assert not (tmp_path / "checkpoints").exists()
    ctx.divergence_guard = False
    ctx.check_finite_parameters(agent, "offline")  # switched off: no stop


def test_a_learned_v_ref_that_turns_nan_online_stops_the_run_where_it_labels():
    from o2o.errors import Diverged
    from o2o.stages.online import EpisodeLabeller

    class NanReference:
        def episode_values(self, mc, observations):
            return torch.full_like(mc, float("nan"))

    tracker = type("Tracker", (), {"log_metrics": lambda self, metrics, step: None})()
    rewards, observations = np.full(5, -1.0, np.float32), torch.zeros(5, 6)
    cfg = validate(compose(["reference=td"]))
    with pytest.raises(Diverged, match="the learned V_ref \\(reference=td\\) of the online episode ending at env step 7"):
        EpisodeLabeller(cfg, NanReference(), tracker)(rewards, observations, 7, terminated=False)
    unguarded = validate(compose(["reference=td", "divergence_guard=false"]))
    assert np.isnan(EpisodeLabeller(unguarded, NanReference(), tracker)(rewards, observations, 7, False)).all()
