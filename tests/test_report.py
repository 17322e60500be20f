"""The report's numbers against hand computation on a store filled with known metric values."""

import math
import numpy as np
import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from o2o.report import build_filter, load_runs, main, write_report

ONLINE_STEPS = 1000


def fill(client, experiment, env, algo, seed, offline_scores, online_scores, regret, q_shift=0.0, parent=None,
         status="FINISHED", metric="normalized_return", online_steps=ONLINE_STEPS, q_over_v_ref=(0.5, 1.0)):
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(experiment)
    tags = {"env": env, "algo": algo, "seed": str(seed), "dataset": f"{env}-data"}
    if parent:
        tags["mlflow.parentRunId"] = parent
    run = client.create_run(exp_id, tags=tags)
    metrics = []
    for step, v in offline_scores:
        metrics.append(Metric(f"offline/eval/{metric}", v, 0, step))
    for step, v in online_scores:
        metrics.append(Metric(f"online/eval/{metric}", v, 0, step))
        metrics.append(Metric("online/eval/return", -1.0, 0, step))  # not a headline: never in the table
    for step, v in regret:
        metrics.append(Metric("online/cumulative_regret", v, 0, step))
    for step, v in zip((500, 1000), q_over_v_ref):  # the fixed-batch calibration ratio; the last one counts
        metrics.append(Metric("offline/calibration/q_data_over_v_ref", v, 0, step))
    for step in range(100, 1001, 100):
        metrics += [Metric("offline/train/q_data", -50 + step / 100 + q_shift, 0, step),
                    Metric("offline/train/mc_return", -40.0, 0, step),
                    Metric("online/train/q_data", -45 + step / 200 + q_shift, 0, step),
                    Metric("online/train/q_policy", -48 + q_shift, 0, step),
                    Metric("online/train/mc_return", -38.0, 0, step)]
    client.log_batch(run.info.run_id, metrics=metrics, params=[Param("schedule.online_steps", str(online_steps)),
                                                                 Param("seed", str(seed)),
                                                                 Param("domain.metric", metric)])
    client.set_terminated(run.info.run_id, status=status)
    return run.info.run_id


@pytest.fixture
def store(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'report.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("O2O_OUTPUTS", str(tmp_path / "outputs"))
    client = MlflowClient(uri)
    exp = "paper"
    # calql on door: two seeds
    fill(client, exp, "door", "calql", 0, [(500, 40.0), (1000, 50.0)], [(100, 48.0), (200, 55.0), (600, 80.0), (1000, 90.0)],
         [(100, 1.0), (1000, 0.4)])
    fill(client, exp, "door", "calql", 1, [(500, 30.0), (1000, 30.0)], [(100, 35.0), (250, 20.0), (600, 70.0), (1000, 70.0)],
         [(100, 1.0), (1000, 0.6)], q_over_v_ref=(0.7, 1.2))
    # cql on door: one seed with an unlearning dip, one unfinished run that is left out
    fill(client, exp, "door", "cql", 0, [(1000, 45.0)], [(100, 10.0), (200, 5.0), (300, 60.0), (1000, 85.0)],
         [(1000, 0.5)], q_shift=-20)
    fill(client, exp, "door", "cql", 1, [(1000, 99.0)], [(1000, 99.0)], [(1000, 0.0)], status="RUNNING")
    # another env
    fill(client, exp, "pen", "calql", 0, [(1000, 60.0)], [(1000, 80.0)], [(1000, 0.2)])
    return client, exp, tmp_path


def test_table_numbers_equal_hand_computation(store):
    client, exp, tmp = store
    result = write_report(client, exp, build_filter(env="door"), tmp / "rep", dip_fraction=0.25)
    rows = {(r["env"], r["algo"]): r for r in result["rows"]}
    assert set(rows) == {("door", "calql"), ("door", "cql")}
    calql = rows[("door", "calql")]
    assert calql["seeds"] == 2
    assert calql["offline_mean"] == pytest.approx(40.0) and calql["offline_std"] == pytest.approx(np.std([50, 30], ddof=1))
    assert calql["final_mean"] == pytest.approx(80.0) and calql["final_std"] == pytest.approx(np.std([90, 70], ddof=1))
    # dip: mean online score at steps <= 250 minus the pre-trained score: (48 + 55) / 2 - 50 and (35 + 20) / 2 - 30
    assert calql["dip_mean"] == pytest.approx(-0.5) and calql["dip_std"] == pytest.approx(np.std([1.5, -2.5], ddof=1))
    assert calql["regret_mean"] == pytest.approx(0.5) and calql["regret_std"] == pytest.approx(np.std([0.4, 0.6], ddof=1))
    assert calql["q_over_v_ref_mean"] == pytest.approx(1.1) and calql["q_over_v_ref_std"] == pytest.approx(
        np.std([1.0, 1.2], ddof=1))
    cql = rows[("door", "cql")]
    assert cql["seeds"] == 1 and cql["dip_mean"] == (10.0 + 5.0) / 2 - 45.0 and cql["dip_std"] == 0.0
    assert cql["final_mean"] == 85.0
    md = (tmp / "rep" / "table.md").read_text()
    assert ("| door | calql | - | normalized_return | 2 | 40.0 ± 14.1 | 80.0 ± 14.1 | -0.5 ± 2.8 | 0.500 ± 0.141 | "
            "1.10 ± 0.14 | - |") in md
    csv_text = (tmp / "rep" / "table.csv").read_text().splitlines()
    assert csv_text[0].startswith("env,algo,config,setting,dataset,metric,seeds,offline_mean") and len(csv_text) == 3


def test_each_run_is_scored_by_its_domains_metric(store):
    client, exp, tmp = store
    fill(client, exp, "kitchen", "calql", 0, [(1000, 0.25)], [(500, 0.5), (1000, 0.75)], [(1000, 0.4)],
         metric="tasks_solved")
    result = write_report(client, exp, build_filter(env="kitchen"), tmp / "k", log_to_mlflow=False)
    (row,) = result["rows"]
    assert row["metric"] == "tasks_solved" and row["offline_mean"] == 0.25 and row["final_mean"] == 0.75
    assert "| kitchen | calql | - | tasks_solved | 1 | 0.250 ± 0.000 | 0.750 ± 0.000 |" in (tmp / "k" / "table.md").read_text()


def test_plots_are_written_and_not_empty(store):
    client, exp, tmp = store
    result = write_report(client, exp, build_filter(), tmp / "rep")
    # the fixed-batch calibration plot: for every env whose runs logged the diagnostics (here all of them)
    for name in ("curves_door.png", "qcal_door.png", "calibration_door.png", "curves_pen.png", "qcal_pen.png",
                 "calibration_pen.png"):
        path = tmp / "rep" / name
        assert path.stat().st_size > 10_000
        image = __import__("matplotlib.image", fromlist=["imread"]).imread(path)
        assert image.std() > 0.01  # not a blank canvas
    artifacts = [a.path for a in client.list_artifacts(result["report_run"], "report")]
    assert "report/table.md" in artifacts and "report/curves_door.png" in artifacts
    assert client.get_run(result["report_run"]).data.tags["report"] == "true"


@pytest.mark.parametrize("kwargs, expected", [
    ({"env": "pen"}, {("pen", "calql")}),
    ({"algos": ["cql"]}, {("door", "cql")}),
    ({"algos": ["cql", "calql"], "env": "door"}, {("door", "cql"), ("door", "calql")}),
    ({"dataset": "pen-data"}, {("pen", "calql")}),
])
def test_filters_select_the_right_runs(store, kwargs, expected):
    client, exp, _ = store
    records = load_runs(client, exp, build_filter(**kwargs), algos=kwargs.get("algos"))
    assert {(r.env, r.algo) for r in records} == expected


def test_parent_filter_and_report_runs_are_not_counted(store):
    client, exp, tmp = store
    parent = client.create_run(client.get_experiment_by_name(exp).experiment_id, tags={"sweep": "true"}).info.run_id
    fill(client, exp, "hammer", "iql", 0, [(1000, 1.0)], [(1000, 2.0)], [(1000, 0.9)], parent=parent)
    write_report(client, exp, build_filter(), tmp / "first")  # a report run in the same experiment
    records = load_runs(client, exp, build_filter(parent=parent))
    assert [(r.env, r.algo) for r in records] == [("hammer", "iql")]
    assert len(load_runs(client, exp, build_filter())) == 5


def test_command_line(store, capsys):
    client, exp, tmp = store
    main(["--experiment", exp, "--env", "pen", "--out", str(tmp / "cli"), "--no-mlflow"])
    out = capsys.readouterr().out
    assert "| pen | calql | - | normalized_return | 1 | 60.0 ± 0.0 | 80.0 ± 0.0 |" in out and (tmp / "cli" / "curves_pen.png").exists()


def test_runs_are_grouped_by_their_whole_configuration_and_each_seed_counts_once(store):
    client, exp, tmp = store
    # two runs of one short configuration with the same seed, and one longer run: never "3 seeds"
    fill(client, exp, "maze", "calql", 0, [(100, 10.0)], [(300, -25.0)], [(300, 1.0)], online_steps=300)
    fill(client, exp, "maze", "calql", 0, [(100, 12.0)], [(300, -20.0)], [(300, 0.9)], online_steps=300)
    fill(client, exp, "maze", "calql", 0, [(1000, 50.0)], [(2000, 90.0)], [(2000, 0.3)], online_steps=2000)
    result = write_report(client, exp, build_filter(env="maze"), tmp / "g", log_to_mlflow=False)
    rows = sorted(result["rows"], key=lambda r: r["config"])
    assert [(r["config"], r["seeds"]) for r in rows] == [("schedule.online_steps=2000", 1), ("schedule.online_steps=300", 1)]
    assert rows[1]["final_mean"] == -20.0  # the latest run of the seed, not a pooled mean
    text = (tmp / "g" / "table.md").read_text()
    assert "Left out: run" in text and "same configuration and seed" in text
    assert "| maze | calql | schedule.online_steps=300 |" in text


def test_single_points_are_drawn_and_a_single_run_is_titled_as_one():
    from o2o.report import RunRecord, curves_figure, qcal_figure

    record = RunRecord("r", "maze", "calql", "0", "d", 1000.0, "success_rate",
                       history={"offline/eval/success_rate": [(100, 1.0)], "online/eval/success_rate": [(500, 0.5), (1000, 1.0)],
                                "offline/train/q_data": [(100, -3.0)]})
    fig = curves_figure([record], "calql on maze")
    assert fig._suptitle.get_text() == "calql on maze: one run per curve"
    offline_axis = fig.axes[0]
    (line,) = offline_axis.get_lines()
    assert line.get_marker() == "o" and list(line.get_xdata()) == [100]  # the score after pre-training is visible
    assert offline_axis.get_ylabel() == "success_rate"
    assert qcal_figure([record], "calql on maze").axes[0].get_ylabel() == "calql\nQ value"


def test_retrained_scores_get_their_own_column_beside_the_fine_tuned_ones(store):
    client, exp, tmp = store
    for seed, retrained in ((0, 0.9), (1, 0.7)):
        run_id = fill(client, exp, "maze", "calql", seed, [(1000, 0.4)], [(1000, 0.6)], [(1000, 0.5)],
                      metric="success_rate")
        client.log_metric(run_id, "retrain/eval/success_rate", 0.1, step=0)
        client.log_metric(run_id, "retrain/eval/success_rate", retrained, step=1000)
    result = write_report(client, exp, build_filter(env="maze"), tmp / "m", log_to_mlflow=False)
    (row,) = result["rows"]
    assert row["retrained_mean"] == pytest.approx(0.8) and row["retrained_std"] == pytest.approx(np.std([0.9, 0.7], ddof=1))
    md = (tmp / "m" / "table.md").read_text()
    assert "| after fine-tuning | after retraining | dip" in md
    assert "| 0.400 ± 0.000 | 0.600 ± 0.000 | 0.800 ± 0.141 |" in md
    door = write_report(client, exp, build_filter(env="door"), tmp / "d", log_to_mlflow=False)
    assert door["rows"] and "after retraining" not in (tmp / "d" / "table.md").read_text()  # no retraining, no column


def test_each_configuration_keeps_one_style_of_its_own_in_every_panel_and_figure():
    """An algorithm with no pre-training is drawn in the online panel only; it once took the colour another
    algorithm had there (Hybrid RL drawn as IQL in the baselines page). Every configuration's colour is its own, the
    same in the curves and the calibration figures, and past ten colours the line style tells them apart."""
    from o2o.report import RunRecord, _pyplot, calibration_figure, curves_figure

    def record(algo, offline=True):
        phases = ("offline", "online") if offline else ("online",)
        history = {f"{phase}/{group}/{name}": [(100, 0.5), (200, 0.6)] for phase in phases
                   for group, names in (("eval", ("success_rate",)), ("calibration", ("q_data", "v_ref")))
                   for name in names}
        return RunRecord("r", "maze", algo, "0", "d", 0.0, "success_rate", history=history)

    records = [record(a) for a in ("awac", "calql", "cql", "cql_sac")] + [record("hybrid_rl", offline=False)] + [
        record(a) for a in ("iql", "rebrac")]
    curves, calibration = curves_figure(records, "maze"), calibration_figure(records, "maze")

    def colors(ax):
        return {line.get_label(): line.get_color() for line in ax.get_lines() if not line.get_label().startswith("_")}

    online = colors(curves.axes[1])
    assert len(online) == 7 and len(set(online.values())) == 7
    assert colors(curves.axes[0]) == {a: c for a, c in online.items() if a != "hybrid_rl"}
    assert colors(calibration.axes[1]) == online  # the calibration figure's online Q panel
    many = curves_figure([record(f"algo_{i:02d}") for i in range(12)], "maze")
    styles = {(line.get_color(), line.get_linestyle()) for line in many.axes[1].get_lines()
              if line.get_label().startswith("algo_")}
    assert len(styles) == 12
    for fig in (curves, calibration, many):
        _pyplot().close(fig)


def test_the_calibration_plot_of_an_offline_study_has_no_empty_online_column():
    from o2o.report import RunRecord, calibration_figure

    def record(online: bool):
        r = RunRecord("id", "door", "calql", "0", "d", 0.0, "success_rate")
        for phase in ("offline", "online") if online else ("offline",):
            for name in ("q_data", "v_ref", "below_v_ref", "bound_rate"):
                r.history[f"{phase}/calibration/{name}"] = [(100, -1.0), (200, -2.0)]
        return r

    assert len(calibration_figure([record(False)], "t").axes) == 2
    assert len(calibration_figure([record(True)], "t").axes) == 4


def test_the_calibration_legend_names_each_configuration_once_and_leaves_the_axis_labels_apart():
    """Six configurations (the companions study): colours name them, once each; four black lines explain the line
    styles. The legend lies below the plots, and the two rows' y-axis labels do not overlap (they did when the
    legend listed 24 entries and squeezed the plots)."""
    from o2o.report import RunRecord, _pyplot, calibration_figure

    records = []
    for i in range(6):
        r = RunRecord("id", "maze", "calql", "0", "d", 0.0, "success_rate", config={"algo.companion": f"variant_{i}"})
        for phase in ("offline", "online"):
            for name in ("q_data", "v_ref", "below_v_ref", "bound_rate"):
                r.history[f"{phase}/calibration/{name}"] = [(100, -1.0 - i), (200, -2.0 - i)]
        records.append(r)
    fig = calibration_figure(records, "maze")
    fig.canvas.draw()
    (legend,) = fig.legends
    texts = [t.get_text() for t in legend.get_texts()]
    assert len(texts) == 10 and len(set(texts)) == 10
    assert sum("variant_" in t for t in texts) == 6
    assert [t for t in texts if "variant_" not in t] == [
        "top: Q(s, a_data)", "top: V_ref (the reference value)", "bottom: share of Q(s, a_data) < V_ref",
        "bottom: share of Q(s, a~pi) < V_ref (bound rate)"]
    box = legend.get_window_extent()
    for ax in fig.axes:
        assert box.y1 <= ax.get_window_extent().y0
    top, bottom = (ax.yaxis.label.get_window_extent() for ax in (fig.axes[0], fig.axes[2]))
    assert bottom.y1 <= top.y0  # the labels stand apart, the lower one wholly below the upper one
    _pyplot().close(fig)


def test_rows_that_differ_by_a_preset_are_labelled_by_it_and_the_legend_stays_in_the_figure(tmp_path, monkeypatch):
    """A whole experiment: runs with experiment=smoke beside runs without; the label is the preset, not the eleven
    params it changes, and the legend lies below the plots, inside the figure."""
    from mlflow.entities import RunTag

    from o2o.report import _pyplot, curves_figure, load_runs, results_table

    uri = f"sqlite:///{tmp_path / 'labels.db'}"
    client = MlflowClient(uri)
    for seed, preset in ((0, True), (1, True), (0, False)):
        run_id = fill(client, "whole", "door", "calql", seed, [(1000, 50.0)], [(1000, 60.0)], [(1000, 0.5)])
        changed = [Param(f"schedule.k{i}", "1" if preset else "2") for i in range(11)]  # what the preset sets
        client.log_batch(run_id, params=changed, tags=[RunTag(
            "overrides", f"{'experiment=smoke ' if preset else ''}seed={seed} threads=1 progress=false")])
    records = load_runs(client, "whole", "", True)
    labels = sorted(row["config"] for row in results_table(records))
    assert labels == ["(no override)", "experiment=smoke"]
    fig = curves_figure(records, "door")
    fig.canvas.draw()
    legend = fig.legends[0]
    texts = sorted(t.get_text() for t in legend.get_texts())
    assert texts == ["calql ((no override))", "calql (experiment=smoke)"]
    box, figure_box = legend.get_window_extent(), fig.bbox
    assert figure_box.x0 <= box.x0 and box.x1 <= figure_box.x1 and figure_box.y0 <= box.y0 and box.y1 <= figure_box.y1
    for ax in fig.axes:  # below every plot: it covers no curve
        assert box.y1 <= ax.get_window_extent().y0
    _pyplot().close(fig)


def test_long_labels_are_cut_in_legends_and_kept_whole_in_the_table():
    from o2o.report import LABEL_CHARS, short_label

    text = "calql (" + " ".join(f"algo.k{i}=v{i}" for i in range(20)) + ")"
    assert len(short_label(text)) == LABEL_CHARS and short_label(text).endswith("…")
    assert short_label("calql") == "calql"


def test_improvement_is_the_mean_online_score_above_the_pretrained_one():
    from o2o.report import RunRecord

    record = RunRecord("r", "maze", "calql", "0", "d", 1000.0, "success_rate",
                       history={"offline/eval/success_rate": [(0, 0.1), (100, 0.4)],
                                "online/eval/success_rate": [(250, 0.2), (500, 0.6), (1000, 1.0)]})
    assert record.improvement() == pytest.approx((0.2 + 0.6 + 1.0) / 3 - 0.4)
    assert record.dip() == pytest.approx(0.2 - 0.4)  # the same record's dip, for contrast
    assert math.isnan(RunRecord("r", "maze", "calql", "0", "d", 0.0, "success_rate").improvement())


def test_the_dip_is_zero_on_average_when_nothing_is_unlearned_and_finds_a_real_drop():
    """The pen study's shape: 20-episode evaluations every 2k of 200k online env steps, so 10 in the dip's window. A
    policy that stays at its pre-trained rate must not dip on average (the lowest of the 10 would, by about 0.17); one
    that falls from 0.6 to 0.3 in the window and recovers after it dips by the 0.3."""
    from o2o.report import RunRecord

    rng = np.random.default_rng(0)

    def run(early: float) -> RunRecord:
        offline = [(20_000, rng.binomial(20, 0.6) / 20)]
        steps = range(2_000, 200_001, 2_000)
        online = [(s, rng.binomial(20, early if s <= 20_000 else 0.6) / 20) for s in steps]
        return RunRecord("r", "pen", "cql", "0", "d", 200_000.0, "success_rate",
                         history={"offline/eval/success_rate": offline, "online/eval/success_rate": online})

    steady = [run(0.6).dip() for _ in range(2000)]
    assert abs(np.mean(steady)) < 0.01
    lowest = [min(v for s, v in r.history["online/eval/success_rate"] if s <= 20_000)
              - r.last("offline/eval/success_rate") for r in (run(0.6) for _ in range(2000))]
    assert np.mean(lowest) < -0.14  # what the lowest would have said of the same policy
    assert np.mean([run(0.3).dip() for _ in range(2000)]) == pytest.approx(-0.3, abs=0.01)


def test_an_offline_study_has_no_empty_online_column():
    from o2o.report import RunRecord, calibration_figure, curves_figure, qcal_figure

    history = {"offline/eval/success_rate": [(0, 0.0), (100, 0.5)], "offline/train/q_data": [(100, -3.0)],
               "offline/calibration/q_data": [(100, -3.0)], "offline/calibration/v_ref": [(100, -4.0)],
               "offline/calibration/below_v_ref": [(100, 0.2)]}
    offline = [RunRecord("r", "door", algo, "0", "d", 0.0, "success_rate", history=dict(history))
               for algo in ("calql", "cql")]
    assert len(curves_figure(offline, "door").axes) == 1
    assert len(qcal_figure(offline, "door").axes) == 2  # one row per algorithm, one column
    assert len(calibration_figure(offline, "door").axes) == 2
    both = [RunRecord("r", "door", "calql", "0", "d", 100.0, "success_rate",
                      history={**history, "online/eval/success_rate": [(100, 1.0)], "online/train/q_data": [(100, -1.0)]})]
    assert len(curves_figure(both, "door").axes) == 2 and len(qcal_figure(both, "door").axes) == 2


def test_runs_of_unlike_settings_are_labelled_never_weighed_and_drawn_apart(tmp_path, monkeypatch):
    """A one-seed quickstart Cal-QL run beside smoke Cal-QL and CQL runs (the presets differ in schedule and sizes):
    every row names its preset, a verdict only weighs the smoke rows against each other, each preset gets its own
    figure, and a success-rate band stays within [0, 1]."""
    from mlflow.entities import RunTag

    from o2o.report import statistics_markdown, write_report

    uri = f"sqlite:///{tmp_path / 'unlike.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = MlflowClient(uri)
    for algo, preset, seed, final in (("calql", "quickstart", 0, 1.0), ("calql", "smoke", 0, 0.0), ("calql", "smoke", 1, 0.5),
                                      ("cql", "smoke", 0, 0.0), ("cql", "smoke", 1, 1.0)):
        steps = 3000 if preset == "quickstart" else 300
        run_id = fill(client, "mixed", "maze", algo, seed, [(40, 0.5)], [(steps // 2, 0.0), (steps, final)],
                      [(steps, 0.5)], metric="success_rate", online_steps=steps)
        client.log_batch(run_id, params=[Param("algo.critic_hidden", "[64, 64]" if preset == "quickstart" else "[32, 32]"),
                                         Param("algo.cql_alpha", "5.0" if algo == "calql" else "1.0")],
                         tags=[RunTag("overrides", f"experiment={preset} algo={algo} seed={seed}")])
    result = write_report(client, "mixed", "", tmp_path / "report", log_to_mlflow=False)
    rows = {(r["algo"], r["setting"]): r for r in result["rows"]}
    assert set(rows) == {("calql", "experiment=quickstart"), ("calql", "experiment=smoke"), ("cql", "experiment=smoke")}
    table = (tmp_path / "report" / "table.md").read_text()
    assert table.count("| experiment=smoke |") == 2 and table.count("| experiment=quickstart |") == 1
    stats = statistics_markdown(result["rows"])
    verdicts = [line for line in stats.splitlines() if "is better)" in line]
    assert len(verdicts) == 3 and all("calql (experiment=smoke) | cql (experiment=smoke)" in line for line in verdicts)
    assert "**Exploratory**: the family is these 3 comparisons" in stats and "verdict (uncorrected)" in stats
    names = sorted(p.name for p in result["files"] if p.name.startswith("curves_"))
    assert names == ["curves_maze_1.png", "curves_maze_2.png"]
    from o2o.report import _pyplot, curves_figure

    smoke = [r for r in result["records"] if r.config.get("schedule.online_steps") == "300"]
    fig = curves_figure(smoke, "maze")
    for ax in fig.axes:
        for band in ax.collections:
            ys = np.concatenate([path.vertices[:, 1] for path in band.get_paths()])
            assert ys.min() >= 0.0 and ys.max() <= 1.0
    _pyplot().close(fig)


def test_shuffling_the_runs_changes_no_printed_number():
    """Every statistic sees the runs in seed order, whatever order the store returned them in (a bootstrap resamples
    by position, so its interval ends would otherwise move)."""
    import random

    from o2o.report import RunRecord, results_table, statistics_markdown, to_markdown

    def record(algo, seed, final):
        return RunRecord(f"{algo}-{seed}", "maze", algo, str(seed), "d", 1000.0, "success_rate", start_time=seed,
                         history={"offline/eval/success_rate": [(100, 0.5)], "online/eval/success_rate": [(1000, final)],
                                  "online/cumulative_regret": [(1000, 1 - final)]})

    runs = [record("calql", s, f) for s, f in enumerate((0.9, 0.1, 0.7, 0.3, 0.8, 0.2, 0.6))]
    runs += [record("cql", s, f) for s, f in enumerate((0.4, 0.5, 0.2, 0.9, 0.3, 0.1, 0.6))]
    pages = set()
    for trial in range(4):
        shuffled = runs[:]
        random.Random(trial).shuffle(shuffled)
        for i, r in enumerate(shuffled):
            r.start_time = i  # the store's order: which run started first
        rows = results_table(shuffled)
        pages.add(statistics_markdown(rows) + to_markdown(rows, 0.1))
    assert len(pages) == 1


def test_a_page_with_one_exploratory_comparison_says_so_in_the_singular():
    """An offline study of Cal-QL against CQL (door_calibration) has one pairwise comparison: the page names its
    family as that one comparison, not as "these 1 comparisons" with a warning about their number."""
    from o2o.report import RunRecord, results_table, statistics_markdown

    records = [RunRecord(f"{algo}-{s}", "door", algo, str(s), "d", 0.0, "success_rate", start_time=s,
                         history={"offline/eval/success_rate": [(20000, 0.1 * s + (algo == "calql") * 0.05)]})
               for algo in ("calql", "cql") for s in range(5)]
    text = statistics_markdown(results_table(records))
    assert len([line for line in text.splitlines() if "is better) |" in line]) == 1
    assert "**Exploratory**: the family is this one comparison, judged at 95%; a study's pre-registered" in text
    assert "these 1 comparisons" not in text and "one in twenty" not in text


def test_runs_on_other_data_content_are_other_rows_and_runs_without_a_digest_join_the_one_content():
    """data.digest came later: a run made before it (no digest) counts with the runs of its configuration while they
    read one data content; where they read two, each content is its own row and the undigested run is left out."""
    from o2o.report import RunRecord, group_runs

    def run(seed, digest=None):
        config = {"schedule.online_steps": "1000", **({"data.digest": digest} if digest else {})}
        return RunRecord(f"r{seed}{digest}", "door", "calql", str(seed), "d", 1000.0, "success_rate", config,
                         start_time=seed)

    groups, left_out = group_runs([run(0), run(1, "aa"), run(2, "aa")])
    assert [sorted(r.seed for r in runs) for runs in groups.values()] == [["0", "1", "2"]] and not left_out
    groups, left_out = group_runs([run(0), run(1, "aa"), run(2, "bb")])
    assert sorted(dict(key[2])["data.digest"] for key in groups) == ["aa", "bb"]
    assert left_out == ["run r0None (door, calql, seed 0): no data digest, and runs of its configuration read 2 "
                        "different data contents"]


def test_a_curve_is_drawn_at_the_steps_its_runs_logged():
    """A single run's curve is its logged points, every one; runs that logged at other steps are each exact at
    their own points and interpolated only between them."""
    from o2o.report import _band

    one = [(0, 0.1), (20, 0.9), (40, 0.5)]
    grid, mean, std = _band([one])
    assert grid.tolist() == [0, 20, 40] and mean.tolist() == [0.1, 0.9, 0.5] and std.tolist() == [0, 0, 0]
    grid, mean, _ = _band([one, [(10, 0.0), (30, 1.0)]])
    assert grid.tolist() == [0, 10, 20, 30, 40]
    np.testing.assert_allclose(mean, [0.1, (0.5 + 0.0) / 2, (0.9 + 0.5) / 2, (0.7 + 1.0) / 2, 0.5])
