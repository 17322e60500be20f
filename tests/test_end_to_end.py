"""``python src/main.py -m algo=<every algorithm option> experiment=smoke`` runs every stage of every algorithm and
leaves complete MLflow runs whose metric names and steps line up."""
import os
import subprocess

import pytest
from mlflow.tracking import MlflowClient

from conftest import ALGOS, SMOKE, compose
from o2o import metrics as M
from o2o.config import validate

# what every algorithm logs, on the same axes: the compare view lines these up
COMMON = [*(M.train(M.ONLINE, k) for k in (M.CRITIC_LOSS, M.ACTOR_LOSS, M.Q_DATA, M.V_REF, M.Q_DATA_MINUS_V_REF,
                                          M.UPDATES_PER_SECOND, M.GRAD_STEPS, M.EPISODE_RETURN)),
          M.CUMULATIVE_REGRET, *(M.evaluation(M.ONLINE, k) for k in (M.NORMALIZED_RETURN, M.SUCCESS_RATE, M.RETURN))]
OFFLINE = [*(M.train(M.OFFLINE, k) for k in (M.CRITIC_LOSS, M.Q_DATA, M.V_REF, M.UPDATES_PER_SECOND)),
           *(M.evaluation(M.OFFLINE, k) for k in (M.NORMALIZED_RETURN, M.SUCCESS_RATE))]


TERMINAL: dict[str, str] = {}


@pytest.fixture(scope="module")
def sweep(main_py_module, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    proc = subprocess.run(main_py_module + ["-m", f"algo={','.join(ALGOS)}", "mlflow_experiment=o2o-e2e",
                                            f"hydra.sweep.dir={out}", *SMOKE],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("o2o-e2e")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("sweep") == "true"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"  # one parent run for the sweep
    children = {r.data.tags["algo"]: r for r in runs if "algo" in r.data.tags}
    assert {r.data.tags["mlflow.parentRunId"] for r in children.values()} == {parents[0].info.run_id}
    TERMINAL["sweep"] = proc.stdout + proc.stderr  # what the terminal showed, for the one-footer check
    folders = sorted(p.name for p in out.iterdir() if p.is_dir() and (p / "checkpoints" / "final.pt").exists())
    assert folders == sorted(f"algo={a},env.dataset.collector.steps=1500,experiment=smoke" for a in ALGOS), folders
    return client, children, out, parents[0]


@pytest.fixture(scope="module")
def main_py_module():
    import sys

    from conftest import ROOT

    return [sys.executable, str(ROOT / "src" / "main.py")]


@pytest.mark.parametrize("algo", ALGOS)
def test_sweep_run_logs_every_stage(sweep, algo):
    client, runs, out, _ = sweep
    assert set(runs) == set(ALGOS)
    run = runs[algo]
    assert run.info.status == "FINISHED"
    tags = run.data.tags
    assert tags["env"] == "pointmaze_umaze" and tags["stage"] == "finished" and tags["seed"] == "0"
    assert tags["dataset"] == "o2o/pointmaze/umaze-waypoints-v0"
    assert run.data.params["algo.name"] == algo and run.data.params["schedule.offline_steps"] == "40"
    metrics = run.data.metrics
    config = validate(compose([f"algo={algo}"])).algo
    pretrains = config.pretrain
    v_ref_keys = [M.train(M.ONLINE, k) for k in (M.V_REF, M.Q_DATA_MINUS_V_REF)]
    for key in COMMON + (OFFLINE if pretrains else []):
        assert key in metrics or key in v_ref_keys and config.mixing_ratio == 0, key
    if config.mixing_ratio == 0:  # batches of online rows only: a V_ref is known once a training episode has ended
        ended = [m.step for m in client.get_metric_history(run.info.run_id, M.train(M.ONLINE, M.EPISODE_RETURN))]
        early = any(step <= 290 for step in ended)  # before the last log flush (every 10 env steps)
        assert all((key in metrics) == early for key in v_ref_keys), (algo, ended)
    assert not pretrains or M.train(M.OFFLINE, M.ACTOR_LOSS) in metrics
    for phase in M.PHASES:  # the bound's rate where the algorithm calibrates (WSRL: offline only)
        calibrates = getattr(config, f"calibrate_{phase}", False) and (phase == M.OFFLINE or config.online_regulariser)
        assert (M.train(phase, M.CALQL_BOUND_RATE) in metrics) == calibrates
    if pretrains:
        history = client.get_metric_history(run.info.run_id, M.train(M.OFFLINE, M.CRITIC_LOSS))
        assert [m.step for m in history] == [10, 20, 30, 40]
    else:
        assert not any(k.startswith("offline/") for k in metrics)
    online_steps = [m.step for m in client.get_metric_history(run.info.run_id, M.evaluation(M.ONLINE, M.SUCCESS_RATE))]
    assert online_steps[-1] == 300 and online_steps == sorted(set(online_steps))  # evaluations end the budget
    # every curve starts at the initial policy: gradient step 0, or env step 0 without pre-training
    first_phase = M.OFFLINE if pretrains else M.ONLINE
    assert client.get_metric_history(run.info.run_id, M.evaluation(first_phase, M.SUCCESS_RATE))[0].step == 0
    assert (online_steps[0] == 0) == (not pretrains)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "resolved_config.yaml" in artifacts
    assert [a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")] == ["checkpoints/final.pt"]
    plots = {a.path: a.file_size for a in client.list_artifacts(run.info.run_id, "plots")}
    assert set(plots) == {"plots/run_curves.png", "plots/run_qcal.png"} and min(plots.values()) > 10_000


def test_the_sweep_parent_names_its_best_child_and_carries_the_comparison_table(sweep, tmp_path):
    """A smoke sweep names no best run (its preset learns nothing); the same children marked as runs of a preset that
    learns get one."""
    from o2o.launchers import summarize_sweep

    client, runs, out, parent = sweep
    assert "best_run.pointmaze_umaze" not in parent.data.tags
    assert parent.data.tags["mlflow.note.content"].startswith(
        "No best run: every run used a preset that learns nothing (smoke)")
    assert {r.data.tags["preset"] for r in runs.values()} == {"smoke"}
    assert all(r.info.run_name.endswith("-smoke-s0") for r in runs.values())
    for r in runs.values():  # a study's --budget smoke: its cpu preset at the smoke preset's values
        client.set_tag(r.info.run_id, "preset", "study/x/cpu")
    summarize_sweep(client, parent.info.run_id, "o2o-e2e", tmp_path / "summary")
    assert client.get_run(parent.info.run_id).data.tags["mlflow.note.content"].startswith(
        "No best run: every run is at the size of the smoke preset, which learns nothing (study/x/cpu with its values)")
    for r in runs.values():
        client.set_tag(r.info.run_id, "preset", "quickstart")
    with pytest.MonkeyPatch.context() as patch:  # children of a size that learns
        patch.setattr("o2o.config_sources.smoke_sized", lambda params: False)
        summarize_sweep(client, parent.info.run_id, "o2o-e2e", tmp_path / "summary")
    parent = client.get_run(parent.info.run_id)
    scores = {r.info.run_id: client.get_metric_history(r.info.run_id, M.evaluation(M.ONLINE, M.SUCCESS_RATE))[-1].value
              for r in runs.values()}
    best_id = parent.data.tags["best_run.pointmaze_umaze"]
    assert scores[best_id] == max(scores.values())
    assert parent.data.metrics["best/pointmaze_umaze/success_rate"] == max(scores.values())
    summary = {a.path for a in client.list_artifacts(parent.info.run_id, "summary")}
    assert {"summary/table.md", "summary/table.csv", "summary/curves_pointmaze_umaze.png"} <= summary
    note = parent.data.tags["mlflow.note.content"]
    assert f"Best on pointmaze_umaze: {client.get_run(best_id).info.run_name} ({best_id})" in note
    assert all(f"| pointmaze_umaze | {algo} |" in note for algo in ALGOS)
    assert (tmp_path / "summary" / "table.md").read_text() in note


def test_python_api_returns_final_metrics(tmp_path):
    from o2o import run

    final = run(env="pointmaze_umaze", algo="calql", run_dir=str(tmp_path),
                overrides=[*SMOKE, "mlflow_experiment=o2o-api", "schedule.online_steps=100", "seed=3"])
    assert {M.summary(M.OFFLINE, M.NORMALIZED_RETURN), M.summary(M.ONLINE, M.NORMALIZED_RETURN),
            M.CUMULATIVE_REGRET} <= set(final)
    assert final[M.ENV_STEPS] == 100
    assert 0.0 <= final[M.CUMULATIVE_REGRET] <= 1.0
    assert (tmp_path / "checkpoints" / "final.pt").is_file()


def test_the_python_api_is_quiet_and_writes_where_the_command_line_does(tmp_path):
    """From another folder, with a store not yet created: MLflow's INFO lines stay off the terminal, and the store is
    the command line's default (the clone's outputs/, or O2O_OUTPUTS); without O2O_OUTPUTS that is this clone's
    outputs/ whatever the current folder."""
    import sys

    from conftest import ROOT
    from o2o.tracking import default_outputs

    code = ("from o2o import run\n"
            f"run(overrides={[*SMOKE, 'schedule.offline_steps=5', 'schedule.online_steps=0', 'progress=false']!r})\n")
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["O2O_OUTPUTS"] = str(tmp_path / "outputs")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "INFO mlflow" not in done.stdout + done.stderr and (tmp_path / "outputs" / "mlflow.db").is_file()
    assert not (tmp_path / "mlruns").exists()
    here = os.getcwd()
    try:
        os.chdir(tmp_path)
        assert default_outputs() == ROOT / "outputs"
    finally:
        os.chdir(here)


def test_a_sweep_prints_one_summary_not_one_per_job(sweep):
    output = TERMINAL["sweep"]
    assert "Calculating estimates" not in output  # rliable's log line per statistic
    assert output.count("  run folder  ") == 0  # the per-job footer
    assert output.count("sweep summary:") == 1
