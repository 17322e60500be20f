"""Studies: the presets compose, the claims are judged as stated, and ``o2o-study`` runs a sweep end to end and
writes a page whose table equals numbers computed by hand from the MLflow store."""
import math
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from conftest import ROOT, compose
from o2o import metrics as M
from o2o.archive import ARCHIVED_TAG
from o2o.config import validate
from o2o import statistics as S
from o2o.runtime import machine
from o2o.study import arms, available, claims, main, smoke_overrides, sweep_params

STUDIES = available()


PRESETS = [(s, b) for s, budgets in STUDIES.items() for b in budgets if b != "smoke"]
PAPER_DISCOUNT = 0.99  # the Cal-QL paper's, every domain (the authors' scripts)


@pytest.mark.parametrize("study,budget", PRESETS)
def test_every_study_preset_composes_for_each_of_its_algorithms(study, budget):
    params = sweep_params(study, budget)
    assert len(params["seed"]) >= S.MIN_SEEDS
    names = []
    for arm in arms(study, budget):
        cfg = validate(compose([f"experiment=study/{study}/{budget}", *arm]))
        names.append(cfg.algo.name)
        assert f"algo={cfg.algo.name}" in arm or any(o.endswith(f"/arm={cfg.algo.name}") for o in arm) or (
            "algo" not in params and not any("/arm=" in o for o in arm)), arm
    if "companion" in params:  # companion methods against plain Cal-QL, the baseline first
        assert params["algo"] == ["calql"] and params["companion"][0] == "plain" and len(params["companion"]) > 1
    else:
        assert {"calql", "cql"} <= set(names) and len(set(names)) == len(names)


def discounts(study, budget, extra=()):
    return {compose([f"experiment=study/{study}/{budget}", *arm, *extra]).algo.gamma for arm in arms(study, budget)}


@pytest.mark.parametrize("study,budget", PRESETS)
def test_every_study_preset_runs_the_papers_discount(study, budget):
    assert discounts(study, budget) == {PAPER_DISCOUNT}
    assert compose([f"experiment=study/{study}/{budget}"]).precision == "fp32"  # the same numbers on every machine
    assert discounts(study, budget, ["algo.gamma=0.95"]) != {PAPER_DISCOUNT}  # a changed discount is seen


def test_the_cpu_presets_keep_the_papers_recipe_but_size():
    for study in STUDIES:
        assert "paper" in STUDIES[study], f"{study} has no paper budget"
        cpu, paper = (compose([f"experiment=study/{study}/{b}", "algo=calql"]) for b in ("cpu", "paper"))
        assert cpu.env.name == paper.env.name and cpu.algo.cql_weight == paper.algo.cql_weight
        assert cpu.env.dataset == paper.env.dataset, study  # both presets state the data: the same data
        assert cpu.algo.reward_scale == paper.algo.reward_scale and cpu.algo.reward_bias == paper.algo.reward_bias
        assert cpu.schedule.offline_steps <= paper.schedule.offline_steps and cpu.algo.gamma == paper.algo.gamma
    door = compose(["experiment=study/door_calibration/cpu", "algo=cql"])
    assert door.schedule.online_steps == 0 and door.env.dataset.id == "o2o/door/awac-recipe-v0"
    from o2o.data.build.adroit import awac_recipe_id

    for study, task in (("door_o2o", "door"), ("door_calibration", "door"), ("pen_o2o", "pen")):
        for budget in ("cpu", "paper"):  # AWAC's recipe as o2o-data build-adroit names it, never downloaded
            dataset = compose([f"experiment=study/{study}/{budget}", "algo=cql"]).env.dataset
            assert (dataset.id, dataset.download) == (awac_recipe_id("o2o", task), False), (study, budget)
    pen = compose(["experiment=study/pen_o2o/cpu", "algo=calql"])
    assert pen.env.max_episode_steps == 100  # the paper's pen episodes
    assert pen.schedule.online_steps == 50_000  # a quarter of the paper's 200k: a run must end within one session
    assert compose(["experiment=study/pen_o2o/paper", "algo=calql"]).schedule.online_steps == 200_000  # the paper's


def test_smoke_budget_is_the_smoke_preset():
    overrides = dict(o.split("=", 1) for o in smoke_overrides())
    smoke = compose(["experiment=smoke"])
    assert overrides["schedule.offline_steps"] == str(smoke.schedule.offline_steps)
    assert overrides["algo.critic_hidden"] == "[32,32]" and overrides["buffer.batch_size"] == str(smoke.buffer.batch_size)


def direct(func, *samples):
    """The 95% interval as rliable computes it, called here directly."""
    from rliable import library as rly

    arrays = tuple(np.asarray(x, float).reshape(-1, 1) for x in samples)
    np.random.seed(S.BOOTSTRAP_SEED)  # rliable's stratified bootstrap draws from NumPy's global generator
    point, ci = rly.get_interval_estimates({"k": arrays if len(arrays) > 1 else arrays[0]}, func, reps=S.BOOTSTRAP_REPS,
                                           random_state=np.random.RandomState(S.BOOTSTRAP_SEED))
    return float(np.ravel(point["k"])[0]), float(ci["k"][0, 0]), float(ci["k"][1, 0])


def test_the_intervals_are_rliables():
    from rliable import metrics

    x, y = [0.9, 0.8, 1.0, 0.7, 0.95], [0.2, 0.6, 0.4, 0.1, 0.5]
    p = S.probability_of_improvement(x, y)
    assert (p.point, p.low, p.high) == pytest.approx(direct(metrics.probability_of_improvement, x, y))
    m = S.aggregates(x)
    assert (m["mean"].point, m["mean"].low, m["mean"].high) == pytest.approx(
        direct(lambda s: np.array([metrics.aggregate_mean(s)]), x))
    assert m["iqm"].point == pytest.approx(metrics.aggregate_iqm(np.asarray(x).reshape(-1, 1)))
    again = S.aggregates(x)  # reproducible, whatever ran in between
    assert again == m and S.probability_of_improvement(x, y) == p


def test_the_verdict_rule():
    assert S.verdict(S.Interval(0.8, 0.6, 0.95), 0.5, "above") == S.HOLDS
    assert S.verdict(S.Interval(0.5, 0.3, 0.7), 0.5, "above") == S.INCONCLUSIVE
    assert S.verdict(S.Interval(0.2, 0.05, 0.4), 0.5, "above") == S.CONTRADICTED
    assert S.verdict(S.Interval(-3.0, -5.0, -1.0), 0.0, "below") == S.HOLDS
    assert S.verdict(S.Interval(-3.0, -5.0, 1.0), 0.0, "below") == S.INCONCLUSIVE
    assert S.verdict(S.Interval(math.nan, math.nan, math.nan), 0.0, "below") == S.INCONCLUSIVE
    assert S.combine([S.HOLDS, S.HOLDS]) == S.HOLDS
    assert S.combine([S.HOLDS, S.INCONCLUSIVE]) == S.INCONCLUSIVE
    assert S.combine([S.HOLDS, S.CONTRADICTED, S.INCONCLUSIVE]) == S.CONTRADICTED


def test_fewer_seeds_than_the_minimum_decide_nothing():
    """One seed a side gives an interval of no width: without the minimum it would 'hold' on a single run."""
    assert S.improves([0.9], [0.1]) == (S.INCONCLUSIVE, S.Interval(1.0, 1.0, 1.0, 1))
    assert S.verdict(S.mean_interval([-3.0, -2.0, -4.0, -3.5]), 0.0, "below") == S.INCONCLUSIVE  # 4 seeds
    assert S.verdict(S.mean_interval([-3.0, -2.0, -4.0, -3.5, -2.5]), 0.0, "below") == S.HOLDS  # 5
    assert S.improves([0.9, 0.8, 0.85, 0.95, 0.9], [0.1, 0.2, 0.15, 0.05, 0.1])[0] == S.HOLDS


def test_claims_are_judged_by_the_intervals():
    from rliable import metrics

    poi = metrics.probability_of_improvement
    seeds = {"calql": {"gap": [5.0, 4.0, 6.0, 5.5, 4.5], "bound_rate": [0.0, 0.01, 0.0, 0.02, 0.0],
                       "below_v_ref": [0.1] * 5, "dip": [-0.05, 0.0, -0.02, 0.01, 0.0],
                       "regret": [0.2, 0.22, 0.18, 0.21, 0.19], "improvement": [0.2, 0.25, 0.22, 0.18, 0.24]},
             "cql": {"gap": [-10.0, -12.0, -9.0, -11.0, -8.0], "bound_rate": [0.6, 0.7, 0.5, 0.65, 0.55],
                     "below_v_ref": [0.9] * 5, "dip": [-0.4, -0.3, -0.5, -0.35, -0.45],
                     "regret": [0.4, 0.45, 0.38, 0.42, 0.41], "improvement": [0.21, 0.1, 0.3, 0.15, 0.2]},
             "iql": {"gap": [math.nan] * 5, "bound_rate": [math.nan] * 5, "below_v_ref": [math.nan] * 5,
                     "dip": [math.nan] * 5, "regret": [0.1, 0.5, 0.2, 0.3, 0.25]}}
    verdicts = {c: v for c, v, _ in claims(seeds)}
    # CQL's gap: every seed below 0, so the interval of the mean is too
    assert direct(lambda s: np.array([metrics.aggregate_mean(s)]), seeds["cql"]["gap"])[2] < 0
    assert verdicts["After pre-training, CQL's policy Q is below the Monte-Carlo return"] == S.HOLDS
    assert direct(poi, seeds["calql"]["gap"], seeds["cql"]["gap"])[1] > 0.5
    assert verdicts["Cal-QL's policy Q is higher relative to the return than CQL's (calibrated)"] == S.HOLDS
    assert verdicts["Cal-QL's bound leaves fewer policy Q-values below V_ref than CQL has"] == S.HOLDS
    assert verdicts["CQL unlearns when fine-tuning starts (a dip), Cal-QL does not, or less"] == S.HOLDS
    # IQL's regret overlaps Cal-QL's: the interval of P(Cal-QL lower) straddles 0.5
    low, high = direct(poi, seeds["iql"]["regret"], seeds["calql"]["regret"])[1:]
    assert low <= 0.5 <= high
    assert verdicts["Cal-QL has the lowest cumulative regret"] == S.INCONCLUSIVE
    # improvement: Cal-QL's values sit inside CQL's spread, so P(Cal-QL's larger) has an interval across 0.5
    low, high = direct(poi, seeds["calql"]["improvement"], seeds["cql"]["improvement"])[1:]
    assert low <= 0.5 <= high and verdicts["Cal-QL improves faster than CQL once fine-tuning starts"] == S.INCONCLUSIVE
    seeds["cql"]["gap"] = [3.0, 4.0, 2.5, 3.5, 3.2]  # CQL above the return on every seed
    verdicts = {c: v for c, v, _ in claims(seeds)}
    assert verdicts["After pre-training, CQL's policy Q is below the Monte-Carlo return"] == S.CONTRADICTED
    seeds["calql"]["gap"] = seeds["cql"]["gap"]  # identical numbers decide nothing
    verdicts = {c: v for c, v, _ in claims(seeds)}
    assert verdicts["Cal-QL's policy Q is higher relative to the return than CQL's (calibrated)"] == S.INCONCLUSIVE
    # the premise needs no Cal-QL: CQL's seeds alone decide it, and nothing that compares the two is shown
    seeds["cql"]["gap"] = [-10.0, -12.0, -9.0, -11.0, -8.0]
    assert [(c, v) for c, v, _ in claims({"cql": seeds["cql"]})] == [
        ("After pre-training, CQL's policy Q is below the Monte-Carlo return", S.HOLDS)]
    assert claims({"calql": seeds["calql"]}) == []


def test_the_calibration_course_gives_each_quarter_of_each_phase_as_rliable_computes_it():
    """Offline points every 500 of 2000 gradient steps; Cal-QL's online points at env steps 100, 250 and 400, so a
    quarter of the phase (100) and a half (200) both take the point at 100, three quarters (300) the one at 250."""
    from rliable import metrics

    from o2o.report import RunRecord
    from o2o.study import calibration_course, study_seeds

    def record(algo, seed, q, v, rate, online=None):
        key = lambda phase, name: M.calibration(phase, name)
        history = {key(M.OFFLINE, "q_policy"): [(500 * (i + 1), x) for i, x in enumerate(q)],
                   key(M.OFFLINE, "v_ref"): [(500 * (i + 1), v) for i in range(4)],
                   key(M.OFFLINE, "bound_rate"): [(500 * (i + 1), x) for i, x in enumerate(rate)]}
        for name, points in (online or {}).items():
            history[key(M.ONLINE, name)] = points
        return RunRecord(f"{algo}{seed}", "door", algo, str(seed), "d", 400.0, M.SUCCESS_RATE, {"algo": algo},
                         history=history)

    records = [record("calql", s, [-10 - s, -20 - s, -25, -30 + s], -40.0, [0.1 * s, 0.2, 0.3, 0.1],
                      {"q_policy": [(100, -5.0 * s), (250, -1.0), (400, -2.0 - s)], "v_ref": [(100, -40.0), (400, -40.0)]})
               for s in range(5)]
    records += [record("cql", s, [-30 - 2 * s, -40, -50, -60 - s], -45.0, [0.2, 0.4, 0.6, 0.8 - 0.1 * s]) for s in range(5)]
    lines = calibration_course(study_seeds(records))

    def cell(values, digits):
        point, low, high = direct(lambda x: np.array([metrics.aggregate_mean(x)]), values)
        return f"{point:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"

    def row(algo, phase, label, quarters, digits):
        return f"| {algo} | {phase} | {label} | " + " | ".join(
            "-" if q is None else cell(q, digits) for q in quarters) + " |"

    gap, share = "Q(s, a~pi) - V_ref", "share of Q(s, a~pi) below V_ref"
    assert lines[2:] == [
        row("calql", M.OFFLINE, gap, [[30 - s for s in range(5)], [20 - s for s in range(5)], [15] * 5,
                                      [10 + s for s in range(5)]], 1),
        row("calql", M.OFFLINE, share, [[0.1 * s for s in range(5)], [0.2] * 5, [0.3] * 5, [0.1] * 5], 2),
        # online: V_ref's last point no later than a quarter (100) is the one at 100, at three quarters still that one
        row("calql", M.ONLINE, gap, [[40 - 5.0 * s for s in range(5)], [40 - 5.0 * s for s in range(5)], [39.0] * 5,
                                     [38.0 - s for s in range(5)]], 1),
        row("cql", M.OFFLINE, gap, [[15 - 2 * s for s in range(5)], [5] * 5, [-5] * 5, [-15 - s for s in range(5)]], 1),
        row("cql", M.OFFLINE, share, [[0.2] * 5, [0.4] * 5, [0.6] * 5, [0.8 - 0.1 * s for s in range(5)]], 2),
    ]  # no online share for Cal-QL (none logged) and no online rows for CQL
    assert lines[0].startswith("| | phase | on the fixed batch | 25% of the phase |")


def test_an_unknown_study_or_budget_stops_with_one_line(capsys):
    for argv in (["nope"], ["pointmaze_o2o", "--budget", "huge"],
                 ["pointmaze_o2o", "--budget", "smoke", "--out", str(ROOT / "docs" / "results" / "x")]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and "\n" not in err and ("choose one of" in err or "write it outside" in err)


def _fmt(values, digits):
    return f"{np.mean(values):.{digits}f} ± {np.std(values, ddof=1):.{digits}f}"


def test_the_study_command_writes_a_page_whose_table_equals_the_store(tmp_path):
    main(["pointmaze_o2o", "--budget", "smoke", "--out", str(tmp_path), "--experiment", "o2o-study",
          "algo=calql,cql", "seed=0,1", "threads=1", "env.dataset.collector.steps=1500", "mlflow.log_models=false",
          "mlflow.system_metrics=false", "progress=false"])
    page = (tmp_path / "pointmaze_o2o-smoke.md").read_text()
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("o2o-study")
    parent = client.search_runs([exp.experiment_id], "tags.sweep = 'true'")[0]
    assert parent.data.tags["study"] == "pointmaze_o2o/smoke" and parent.info.run_id in page
    children = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted((r.data.tags["algo"], r.data.tags["seed"]) for r in children) == [
        ("calql", "0"), ("calql", "1"), ("cql", "0"), ("cql", "1")]

    def history(run, key):
        return sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))

    per_seed = {}
    for algo in ("calql", "cql"):
        runs = [r for r in children if r.data.tags["algo"] == algo]
        offline = [history(r, M.evaluation(M.OFFLINE, M.SUCCESS_RATE))[-1][1] for r in runs]
        final = [history(r, M.evaluation(M.ONLINE, M.SUCCESS_RATE))[-1][1] for r in runs]
        # smoke: 300 online steps, the first 10% is 30 steps: before the first evaluation, so the dip is the
        # first online score minus the pre-trained one
        dips = [history(r, M.evaluation(M.ONLINE, M.SUCCESS_RATE))[0][1] - o for r, o in zip(runs, offline)]
        regret = [history(r, M.CUMULATIVE_REGRET)[-1][1] for r in runs]
        ratio = [history(r, M.calibration(M.OFFLINE, "q_data_over_v_ref"))[-1][1] for r in runs]
        below = [history(r, M.calibration(M.OFFLINE, "below_v_ref"))[-1][1] for r in runs]
        expected = (f"| pointmaze_umaze | {algo} | - | success_rate | 2 | {_fmt(offline, 3)} | {_fmt(final, 3)} | "
                    f"{_fmt(dips, 3)} | {_fmt(regret, 3)} | {_fmt(ratio, 2)} | {_fmt(below, 2)} |")
        assert expected in page, (expected, page)
        gaps = [history(r, M.calibration(M.OFFLINE, "q_policy"))[-1][1] - history(r, M.calibration(M.OFFLINE, "v_ref"))[-1][1]
                for r in runs]
        if algo == "cql":
            assert f"CQL: mean Q(s, a~pi) - V_ref = {S.mean_interval(gaps).format(2)}" in page
        for phase in M.PHASES:  # the calibration course: the last value logged by each quarter of the phase
            q, v = ([history(r, M.calibration(phase, name)) for r in runs] for name in ("q_policy", "v_ref"))

            def at(points, f):
                return ([x for s, x in points if s <= f * points[-1][0]] or [math.nan])[-1]

            cells = [S.mean_interval([at(a, f) - at(b, f) for a, b in zip(q, v)]) for f in (0.25, 0.5, 0.75, 1.0)]
            assert f"| {algo} | {phase} | Q(s, a~pi) - V_ref | " + " | ".join(
                "-" if math.isnan(c.point) else c.format(1) for c in cells) + " |" in page
        per_seed[algo] = {"final": final, "regret": regret}
        mean, iqm = S.aggregates(final)["mean"], S.aggregates(final)["iqm"]
        assert f"| {algo} | - | 2 |" in page and f"{mean.format(3)}, {iqm.format(3)}" in page
    verdict, p = S.improves(per_seed["calql"]["regret"], per_seed["cql"]["regret"], higher_is_better=False)
    assert (f"| pointmaze_umaze | calql | cql | cumulative regret (lower is better) | {p.format(2)} | {verdict} |" in page
            and f"P(Cal-QL's regret lower than cql's) = {p.format(2)}" in page)
    assert "at the smoke scale (2 seeds per algorithm)" in page and "no claim is decided" in page
    assert "4 finished runs. 4 of the 4 runs planned by the sweep have finished." in page
    assert "## The paper's claims at this scale" in page and "Cal-QL has the lowest cumulative regret" in page
    images = re.findall(r"!\[[^]]*\]\(([^)]+)\)", page)
    assert {p.rsplit("/", 1)[1] for p in images} == {"curves_pointmaze_umaze.png", "qcal_pointmaze_umaze.png",
                                                    "calibration_pointmaze_umaze.png"}
    for image in images:
        assert (tmp_path / image).stat().st_size > 10_000
    assert "o2o-study pointmaze_o2o --budget smoke" in page and "Commit: `" in page
    assert f". Machine: {machine()}. Written" in page  # the one machine its runs recorded
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "study")} >= {"study/pointmaze_o2o-smoke.md",
                                                                                  "study/table.md"}
    # the page of a sweep that ran, written again: same table, same command and commit
    main(["pointmaze_o2o", "--budget", "smoke", "--out", str(tmp_path / "again"), "--experiment", "o2o-study",
          "--page-only", parent.info.run_id])
    again = (tmp_path / "again" / "pointmaze_o2o-smoke.md").read_text()
    strip = lambda text: re.sub(r"Written [^;.]*[;.]( the sweep took \d+ min in all its parts\.)?", "", text)  # noqa: E731
    assert strip(again) == strip(page)


def test_the_same_study_command_continues_its_sweep_and_new_starts_another(tmp_path, capsys, monkeypatch):
    """A study may span sessions: the same command reuses the latest sweep folder and its MLflow parent (finished
    jobs are not run again); --new starts a new folder and parent. Jobs go through submitit from ``python -m o2o.cli``
    (an editable install's launchers must be visible to Hydra without src/ on sys.path)."""
    args = ["pointmaze_o2o", "--budget", "smoke", "--launcher", "local-parallel", "--out", str(tmp_path),
            "--experiment", "o2o-continue", "algo=calql", "seed=0", "threads=1", "env.dataset.collector.steps=1500",
            "mlflow.log_models=false", "mlflow.system_metrics=false", "progress=false", "hydra.launcher.mem_gb=2"]
    monkeypatch.setenv("O2O_OUTPUTS", str(tmp_path / "outputs"))  # no sweep folder of another test to continue
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])

    def sweeps():
        exp = client.get_experiment_by_name("o2o-continue")
        parents = client.search_runs([exp.experiment_id], "tags.sweep = 'true'", order_by=["attributes.start_time"])
        children = client.search_runs([exp.experiment_id], "tags.mlflow.parentRunId != ''")
        return parents, children

    main(args)
    assert ("this part of the sweep: 1 runs finished; 0 ended unfinished (failed, interrupted or preempted: the "
            "same command continues the last two); 0 still marked running (killed hard, here or in an earlier part, or "
            "running elsewhere); 0 finished before and left as they were (0 restored" in capsys.readouterr().out)
    (first,), children = sweeps()
    assert len(children) == 1 and children[0].info.status == "FINISHED"
    finished_at = children[0].info.end_time
    main(args)
    out = capsys.readouterr().out
    assert "continuing the sweep in" in out
    assert "this part of the sweep: 0 runs finished; 0 ended unfinished" in out and "1 finished before and left as " \
        "they were (0 restored" in out
    (again,), children_again = sweeps()
    assert again.info.run_id == first.info.run_id and again.info.status == "FINISHED"
    assert len(children_again) == 1 and children_again[0].info.end_time == finished_at  # not run again
    assert int(again.data.tags["study_wall_s"]) >= int(first.data.tags["study_wall_s"])
    page = (tmp_path / "pointmaze_o2o-smoke.md").read_text()
    with pytest.raises(SystemExit):  # the records kept beside the page are the first sweep's
        main([*args, "--new"])
    assert "give the new sweep its own records folder" in capsys.readouterr().err
    main([*args, "--new", "--records", str(tmp_path / "records-of-the-new-sweep")])
    parents, children = sweeps()
    assert len(parents) == 2 and parents[1].data.tags["sweep_dir"] != first.data.tags["sweep_dir"]
    assert len(children) == 2

    # the machine is lost (its sweep folders and its MLflow store); the records kept with the page are not: the same
    # command restores the finished run, its job does nothing, and the page says what the first one said
    shutil.rmtree(tmp_path / "outputs")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'another-machine.db'}")
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    main(args)
    out = capsys.readouterr().out
    assert "restored 1 finished runs" in out
    assert "this part of the sweep: 0 runs finished; 0 ended unfinished" in out and "1 finished before and left as " \
        "they were (1 restored" in out
    (restored,), (run,) = sweeps()
    assert run.data.tags[ARCHIVED_TAG] == children_again[0].info.run_id and run.info.end_time == finished_at
    assert restored.data.tags[ARCHIVED_TAG] == first.info.run_id
    assert int(restored.data.tags["study_wall_s"]) >= int(again.data.tags["study_wall_s"])

    def results(text):
        return text[text.index("## Results"):text.index("## How this page was made")]
    assert results((tmp_path / "pointmaze_o2o-smoke.md").read_text()) == results(page)


def test_a_companion_study_judges_each_variant_against_plain_calql():
    """study_seeds names each variant by what sets it apart (companion=...), and companion_claims judges regret,
    score after fine-tuning and, for the retraining variant, retrained against fine-tuned, by the one rule."""
    from rliable import metrics

    from o2o import metrics as M
    from o2o.report import RunRecord
    from o2o.study import PLAIN, companion_claims, study_seeds

    def run(companion, seed, final, regret, retrained=None):
        history = {M.evaluation(M.OFFLINE, "success_rate"): [(20000, 0.5)],
                   M.evaluation(M.ONLINE, "success_rate"): [(300, 0.5), (6000, final)],
                   "online/cumulative_regret": [(6000, regret)]}
        if retrained is not None:
            history[M.evaluation(M.RETRAIN, "success_rate")] = [(20000, retrained)]
        bonus = {"plain": "none", "qknn": "qknn", "ooo_short_retrain": "rnd"}[companion]
        return RunRecord(f"{companion}-{seed}", "pointmaze_umaze", "calql", str(seed), "d", 6000.0, "success_rate",
                         config={"exploration.bonus": bonus}, start_time=seed,
                         overrides=f"algo=calql seed={seed} companion={companion} experiment=study/companions/cpu",
                         history=history)

    plain_final, plain_regret = [0.6, 0.65, 0.7, 0.6, 0.62], [0.40, 0.42, 0.38, 0.41, 0.39]
    qknn_final, qknn_regret = [0.9, 0.95, 0.92, 0.97, 0.93], [0.20, 0.22, 0.18, 0.21, 0.19]  # better on every seed
    ooo_final, ooo_regret = [0.62, 0.7, 0.55, 0.66, 0.6], [0.41, 0.37, 0.43, 0.39, 0.40]  # inside plain's spread
    ooo_retrained = [0.3, 0.35, 0.25, 0.3, 0.32]  # below its fine-tuned policy on every seed
    records = [run("plain", s, plain_final[s], plain_regret[s]) for s in range(5)]
    records += [run("qknn", s, qknn_final[s], qknn_regret[s]) for s in range(5)]
    records += [run("ooo_short_retrain", s, ooo_final[s], ooo_regret[s], ooo_retrained[s]) for s in range(5)]
    seeds = study_seeds(records)
    assert set(seeds) == {PLAIN, "companion=qknn", "companion=ooo_short_retrain"}
    assert seeds["companion=qknn"]["final"] == qknn_final and seeds[PLAIN]["regret"] == plain_regret
    verdicts = {c: v for c, v, _ in companion_claims(seeds)}
    poi = metrics.probability_of_improvement
    assert direct(poi, plain_regret, qknn_regret)[1] > 0.5
    assert verdicts["`companion=qknn` lowers Cal-QL's cumulative regret"] == S.HOLDS
    assert verdicts["`companion=qknn` raises Cal-QL's score after fine-tuning"] == S.HOLDS
    low, high = direct(poi, ooo_final, plain_final)[1:]
    assert low <= 0.5 <= high
    assert verdicts["`companion=ooo_short_retrain` raises Cal-QL's score after fine-tuning"] == S.INCONCLUSIVE
    assert direct(poi, ooo_retrained, ooo_final)[2] < 0.5
    assert verdicts["`companion=ooo_short_retrain`: the retrained policy scores higher than the fine-tuned one it "
                    "was retrained from"] == S.CONTRADICTED
    assert not any("qknn`: the retrained" in c for c in verdicts)  # no retraining, no such claim
    assert claims(seeds) == []  # no algorithm pair in a companion study


def _companion_run(companion, seed, final=0.5, history=()):
    from o2o.report import RunRecord

    base = {M.evaluation(M.OFFLINE, "success_rate"): [(20000, 0.5)],
            M.evaluation(M.ONLINE, "success_rate"): [(300, 0.5), (6000, final)],
            "online/cumulative_regret": [(6000, 0.4)]}
    return RunRecord(f"{companion}-{seed}", "pointmaze_medium", "calql", str(seed), "d", 6000.0, "success_rate",
                     config={"companion": companion}, start_time=seed,
                     overrides=f"algo=calql seed={seed} companion={companion} experiment=study/companions/cpu",
                     history={**base, **dict(history)})


def test_a_companion_page_says_what_each_variant_did():
    """companion_effects: per variant the bound rate, the mean bonus over fine-tuning, the V_ref errors and OOO's
    retraining gain, each the rliable mean interval of the per-seed values computed here by hand; a column only where
    some variant has its metric, '-' for a variant without it."""
    from rliable import metrics

    from o2o.report import BONUS
    from o2o.study import PLAIN, companion_effects, study_seeds

    bound = M.calibration(M.OFFLINE, "bound_rate")
    online_mae = M.reference(M.ONLINE, "v_ref_mae")
    records = [_companion_run("plain", s, history={bound: [(20000, 0.01 * s)]}) for s in range(5)]
    bonus_per_step = [[0.2 + s, 0.4 + s, 0.9 + s] for s in range(5)]  # each seed's bonus at three log flushes
    records += [_companion_run("qknn", s, history={bound: [(20000, 0.02)],
                                                   BONUS: list(zip((500, 1000, 1500), bonus_per_step[s]))})
                for s in range(5)]
    maes = [[1.0 + s, 3.0, 5.0 - s, 4.0] for s in range(5)]  # per finished episode
    records += [_companion_run("v_ref_regression", s, history={bound: [(20000, 0.03)],
                                                               online_mae: list(zip(range(4), maes[s]))})
                for s in range(5)]
    finals, retrained = [0.5, 0.6, 0.7, 0.6, 0.5], [0.7, 0.6, 0.9, 0.8, 0.8]
    records += [_companion_run("ooo_short_retrain", s, final=finals[s],
                               history={bound: [(20000, 0.02)],
                                        M.evaluation(M.RETRAIN, "success_rate"): [(20000, retrained[s])]})
                for s in range(5)]
    lines = companion_effects(study_seeds(records))
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == ["variant", "policy Q below the run's V_ref after pre-training (bound rate)",
                      "bonus added to the reward during fine-tuning (mean)", "the same on the online episodes: MAE, mean",
                      "retrained minus fine-tuned score"]  # no online bound rate, no offline V_ref error: no column
    table = {row.split("|")[1].strip(): [c.strip() for c in row.strip("|").split("|")[1:]] for row in lines[2:]}
    assert list(table) == [PLAIN, "companion=ooo_short_retrain", "companion=qknn", "companion=v_ref_regression"]
    mean = metrics.aggregate_mean
    point, low, high = direct(mean, [0.01 * s for s in range(5)])
    assert table[PLAIN][0] == f"{point:.3f} [{low:.3f}, {high:.3f}]" and table[PLAIN][1:] == ["-", "-", "-"]
    point, low, high = direct(mean, [sum(b) / 3 for b in bonus_per_step])
    assert table["companion=qknn"][1] == f"{point:.3f} [{low:.3f}, {high:.3f}]"
    point, low, high = direct(mean, [sum(m) / 4 for m in maes])
    assert table["companion=v_ref_regression"][2].startswith(f"{point:.2f} [{low:.2f}, {high:.2f}]")
    point, low, high = direct(mean, [r - f for r, f in zip(retrained, finals)])
    assert table["companion=ooo_short_retrain"][3] == f"{point:.3f} [{low:.3f}, {high:.3f}]"
    assert companion_effects(study_seeds([r for r in records if "plain" not in r.run_id])) == []  # no baseline


def test_each_pair_of_calql_rows_is_compared_once_and_named():
    """The report's probability-of-improvement table with two Cal-QL rows and a CQL row: Cal-QL A against B once
    (not B against A as well), each Cal-QL row against CQL, each row named by its label."""
    from rliable import metrics

    from o2o.report import RunRecord, results_table, statistics_markdown

    finals = {"plain": [0.5, 0.6, 0.4, 0.5, 0.6], "qknn": [0.7, 0.8, 0.6, 0.9, 0.7]}
    records = [_companion_run(c, s, final=finals[c][s]) for c in finals for s in range(5)]
    records += [RunRecord(f"cql-{s}", "pointmaze_medium", "cql", str(s), "d", 6000.0, "success_rate",
                          config={"companion": "plain"}, start_time=s,
                          overrides=f"algo=cql seed={s} companion=plain experiment=study/companions/cpu",
                          history={M.evaluation(M.ONLINE, "success_rate"): [(6000, 0.3)]}) for s in range(5)]
    text = statistics_markdown(results_table(records))
    pairs = [line for line in text.splitlines() if "is better) |" in line]
    rows = {tuple(c.strip() for c in line.strip("|").split("|")[1:4]) for line in pairs}
    calql_pairs = {(a, b) for a, b, _ in rows if b.startswith("calql")}
    assert len(calql_pairs) == 1 and len({r[:2] for r in rows}) == 3  # A-B once, A-CQL, B-CQL
    (a, b), = calql_pairs
    first, second = (finals["plain"], finals["qknn"]) if "plain" in a else (finals["qknn"], finals["plain"])
    point, low, high = direct(metrics.probability_of_improvement, first, second)
    line = next(l for l in pairs if b in l.split("|")[3] and "fine-tuning" in l)
    assert f"{point:.2f} [{low:.2f}, {high:.2f}]" in line


def test_the_pairwise_table_can_weigh_any_algorithm_against_the_others():
    """``o2o-report --focus ALGO``: one's own method's rows set against every other row of their setting."""
    from o2o.report import RunRecord, results_table, statistics_markdown

    def runs(algo, scores):
        return [RunRecord(f"{algo}-{s}", "pointmaze_medium", algo, str(s), "d", 6000.0, "success_rate", config={},
                          start_time=s, overrides=f"algo={algo} seed={s}",
                          history={M.evaluation(M.ONLINE, "success_rate"): [(6000, score)]})
                for s, score in enumerate(scores)]

    rows = results_table(runs("mine", [0.9, 0.8, 0.9, 0.95, 0.85]) + runs("cql", [0.1, 0.2, 0.1, 0.15, 0.2]))
    assert "is better) |" not in statistics_markdown(rows)  # no Cal-QL row: nothing set against anything
    text = statistics_markdown(rows, focus="mine")
    (pair,) = [line for line in text.splitlines() if "fine-tuning (higher is better) |" in line]
    assert "| mine row | against |" in text and "P(mine row better)" in text
    assert pair.split("|")[2].strip() == "mine" and pair.split("|")[3].strip() == "cql"
    assert pair.split("|")[-2].strip() == "holds"  # every run of mine beats every run of cql


KILLED_PART = """
import sys, threading, time
from mlflow.tracking import MlflowClient
from o2o.study import StudyClock, run_counting
store, sweep_dir = sys.argv[1:3]
client = MlflowClient(store)
clock = StudyClock(client, "o2o-clock", sweep_dir, "o2o-study x --launcher slurm", "def456")
def make_parent():  # the sweep makes its parent a little after it starts: the first ticks find none
    time.sleep(1.0)
    run = client.create_run(client.create_experiment("o2o-clock"),
                            tags={"sweep": "true", "sweep_dir": sweep_dir, "study_wall_s": "100", "study_commit": "abc123"})
    print("parent", run.info.run_id, clock.start, flush=True)
threading.Thread(target=make_parent).start()
run_counting([sys.executable, "-c", "import time; time.sleep(600)"], clock, every=0.5)
"""


def test_a_study_part_killed_with_its_session_keeps_its_time_and_commit(tmp_path):
    """A study may span sessions, and a session's end kills ``o2o-study`` (SIGKILL, no cleanup): the clock ticking on
    the parent run while the sweep runs keeps that part's time (losing at most one tick) and its commit, and the next
    part adds its own to both."""
    import signal
    import subprocess
    import sys
    import time

    from o2o.study import StudyClock, run_counting

    store, sweep_dir = f"sqlite:///{tmp_path / 'clock.db'}", str(tmp_path / "sweep")
    part = subprocess.Popen([sys.executable, "-c", KILLED_PART, store, sweep_dir], stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    _, parent, started = part.stdout.readline().split()
    client = MlflowClient(store)
    wall = lambda: float(client.get_run(parent).data.tags.get("study_wall_s", 100))  # noqa: E731
    deadline = time.time() + 60
    while wall() < 102 and time.time() < deadline:
        time.sleep(0.2)
    os.killpg(part.pid, signal.SIGKILL)
    killed_after = time.time() - float(started)
    part.wait()
    tags = client.get_run(parent).data.tags
    lost = 100 + killed_after - float(tags["study_wall_s"])  # the tag is in whole seconds
    assert -0.5 <= lost <= 0.5 + 0.5 + 2.0  # a tick (0.5 s) at most, and 2 s for a tick's own writes under load
    assert tags["study_commit"] == "abc123; continued at def456" and tags["study_command"] == "o2o-study x --launcher slurm"

    before = float(tags["study_wall_s"])
    again = StudyClock(client, "o2o-clock", tmp_path / "sweep", "o2o-study x --launcher slurm", "def456")
    assert run_counting([sys.executable, "-c", "import time; time.sleep(1)"], again, every=0.2) == 0
    total = again.tick(parent)
    assert before + 1 <= total < before + 10 and client.get_run(parent).data.tags["study_wall_s"] == f"{total:.0f}"
    assert client.get_run(parent).data.tags["study_commit"] == "abc123; continued at def456"  # the same commit once


def test_a_page_names_every_machine_its_runs_ran_on_and_says_where_it_cannot():
    """A study may span sessions on different machines: the page lists each machine its runs' ``machines`` tags name,
    once, and says how many runs ran in part before runs recorded theirs."""
    from types import SimpleNamespace

    from o2o.study import machines_line

    tags = {"a": {"machines": "A, 2 cores"}, "b": {"machines": "not recorded; A, 2 cores; B, 8 cores"}, "c": {}}
    client = SimpleNamespace(get_run=lambda rid: SimpleNamespace(data=SimpleNamespace(tags=tags[rid])))
    runs = lambda *ids: [SimpleNamespace(run_id=i) for i in ids]  # noqa: E731
    assert machines_line(client, runs("a")) == "Machine: A, 2 cores"
    assert machines_line(client, runs("a", "b")) == (f"Machines: A, 2 cores; B, 8 cores (1 of 2 runs ran in part "
                                                     f"before runs recorded their machine; this page was written on "
                                                     f"{machine()})")
    assert machines_line(client, runs("c")) == f"Machine: not recorded by its runs (this page was written on {machine()})"


def test_a_study_page_is_written_again_from_its_records_alone(tmp_path):
    """pen_o2o's committed records, restored into a temporary store by ``--page-from-records`` (no sweep, no launcher,
    no store of one's own: MLFLOW_TRACKING_URI points nowhere), give the committed page: every number, the command and
    the commits; only the time the page was written differs."""
    import subprocess
    import sys

    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/nowhere/mlflow.db"}
    done = subprocess.run([sys.executable, "-m", "o2o.study", "pen_o2o", "--page-from-records", "--out", str(tmp_path),
                           "--records", str(ROOT / "docs" / "results" / "pen_o2o-cpu" / "records")],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    written = re.sub(r"Written [0-9-]+ [0-9:]+ \w+", "Written <when>", (tmp_path / "pen_o2o-cpu.md").read_text())
    committed = re.sub(r"Written [0-9-]+ [0-9:]+ \w+", "Written <when>",
                       (ROOT / "docs" / "results" / "pen_o2o-cpu.md").read_text())
    assert written == committed
    assert not (tmp_path / "nowhere").exists()
    for folder in (ROOT / "docs" / "results").glob("*/records"):  # every study's records stay small
        kept = [p for p in folder.iterdir() if not p.name.endswith(".tar.xz")]  # what git keeps (no dataset archive)
        assert sum(p.stat().st_size for p in kept) < 500_000, folder
    # another study's records are refused, not written under this study's name
    other = tmp_path / "other"
    other.mkdir()
    (other / "parent.json").write_text('{"format": 2, "run_id": "a", "tags": {"study": "pen_o2o/cpu"}}')
    with pytest.raises(SystemExit) as stop:
        main(["door_calibration", "--page-from-records", "--out", str(tmp_path / "out"), "--records", str(other)])
    assert stop.value.code == 2 and not (tmp_path / "out" / "door_calibration-cpu.md").exists()


def test_every_study_page_keeps_the_records_it_was_written_from():
    """Anyone can recompute a committed page: each docs/results/<study>-<budget>.md has its records folder beside it
    (--page-from-records), and the records are of that study and budget."""
    import json

    from o2o.archive import PARENT_FILE

    pages = sorted((ROOT / "docs" / "results").glob("*-*.md"))
    assert pages
    for page in pages:
        parent = page.with_suffix("") / "records" / PARENT_FILE
        assert parent.exists(), f"{page.name} keeps no records: write it with o2o-study, which keeps them beside it"
        name, budget = page.stem.rsplit("-", 1)
        record = json.loads(parent.read_text())
        assert record["tags"]["study"] == f"{name}/{budget}", page.name
        text = page.read_text()
        assert f"sweep parent run `{record['run_id']}`" in text, f"{page.name}: records of another sweep"
        runs = len(list(parent.parent.glob("*.json.gz")))
        assert f"`{record['run_id']}`, {runs} finished runs." in text, f"{page.name}: not one record per finished run"


def test_a_sweep_records_the_jobs_it_plans_and_its_page_names_those_not_finished():
    """A study may be written up while its sweep is still under way (it spans sessions): the parent run records the
    jobs Hydra's basic sweeper expands (o2o.launchers.plan_tags), matched to finished runs on what they compute, and
    the page says how many have finished and which have not."""
    import json
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from o2o.launchers import plan_tags, planned_jobs
    from o2o.study import plan_progress
    from o2o.tracking import PLANNED_JOBS_TAG, PLANNED_RUNS_TAG

    basic = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
    cfg = OmegaConf.create({"hydra": {
        "sweeper": {"_target_": basic, "params": {"algo": "calql,cql", "seed": "0,1"}},
        "overrides": {"task": ["experiment=study/door_calibration/paper", "threads=2", "progress=false"]}}})
    preset = "experiment=study/door_calibration/paper"
    assert planned_jobs(cfg) == [f"algo={a} {preset} seed={s}" for a in ("calql", "cql") for s in (0, 1)]
    tags = plan_tags(cfg)
    assert tags == {PLANNED_RUNS_TAG: "4", PLANNED_JOBS_TAG: json.dumps(planned_jobs(cfg))}

    def runs(*jobs):  # finished runs as the page reads them: their overrides tag, bookkeeping keys included
        return [SimpleNamespace(overrides=f"{job} threads=1 progress=False mlflow_experiment=o2o") for job in jobs]

    assert plan_progress(tags, runs(f"algo=cql seed=1 {preset}")) == (
        " 1 of the 4 runs planned by the sweep has finished; not yet: algo=calql seed=0, algo=calql seed=1, "
        "algo=cql seed=0.")
    every = [f"algo={a} seed={s} {preset}" for a in ("calql", "cql") for s in (0, 1)]
    assert plan_progress(tags, runs(*every)) == " 4 of the 4 runs planned by the sweep have finished."
    assert plan_progress(tags, runs(*every, f"algo=cql seed=7 {preset}")) == (
        " 4 of the 4 runs planned by the sweep have finished (and 1 finished run outside that plan is shown too).")
    assert plan_progress({}, runs(*every)) == ""  # a sweep that recorded no plan: nothing said
    # the jobs exactly as Hydra hands them to the jobs (their overrides tag): a value holding "; ", an interpolation
    # left unresolved (Hydra escapes it), jobs that differ only in a bookkeeping key (threads) counted once
    odd = OmegaConf.create({"hydra": {
        "sweeper": {"_target_": basic, "params": {"seed": "0,1", "threads": "1,2"}},
        "overrides": {"task": ["+note='x; z=1'", "y=${seed}"]}}})
    assert len(planned_jobs(odd)) == 2 and all("; " in job for job in planned_jobs(odd))
    tagged = [f"+note='x; z=1' seed={s} y=$\\{{seed\\}}" for s in (0, 1)]  # the jobs' overrides tags
    assert plan_progress(plan_tags(odd), runs(*tagged)) == " 2 of the 2 runs planned by the sweep have finished."
    assert plan_progress(plan_tags(odd), runs(tagged[1])).endswith("has finished; not yet: seed=0.")
    # a swept value holding a space (quoted on the command line) is named whole, as Hydra hands it to its job
    spaced = OmegaConf.create({"hydra": {
        "sweeper": {"_target_": basic, "params": {"+note": "'a b','c d'"}}, "overrides": {"task": ["seed=0"]}}})
    assert planned_jobs(spaced) == ["+note='a b' seed=0", "+note='c d' seed=0"]
    assert plan_progress(plan_tags(spaced), runs("seed=0 +note='c d'")).endswith("not yet: +note='a b'.")
    cfg.hydra.overrides.task.append("seed=0")  # the command line's value replaces the preset's sweep of the key
    assert planned_jobs(cfg) == [f"algo={a} {preset} seed=0" for a in ("calql", "cql")]
    many = OmegaConf.merge(cfg, {"hydra": {"sweeper": {"params": {"seed": ",".join(map(str, range(200)))}},
                                           "overrides": {"task": [preset]}}})
    assert plan_tags(many) == {PLANNED_RUNS_TAG: "400"}  # too long for an MLflow tag: the count only
    assert plan_progress(plan_tags(many), runs(*every)) == " The sweep plans 400 runs (too many to list here)."
    cfg.hydra.overrides.task.append("algo=glob(*)")  # expanded only with Hydra's config loader: not recorded
    assert planned_jobs(cfg) is None and plan_tags(cfg) == {}
    other = OmegaConf.merge(cfg, {"hydra": {"sweeper": {"_target_": "hydra_plugins.optuna.OptunaSweeper"}}})
    assert planned_jobs(other) is None


def test_a_runs_overrides_tag_splits_into_the_overrides_hydra_had():
    """A run's overrides tag joins Hydra's overrides with spaces; matching a finished run to its job and the page's
    labels read them back whole: quoted values and lists may hold spaces, an unquoted value too, and a deletion
    (~key) changes what a run computes."""
    from o2o.archive import computing_overrides
    from o2o.report import override_key, split_overrides

    tag = ("algo=calql +note='a b; c=1' dims=[256, 256] ~algo.bc_steps name=hello world y=$\\{seed\\} "
           "q=\"it's\" seed=3 threads=2 hydra/launcher=submitit_slurm")
    assert split_overrides(tag) == ["algo=calql", "+note='a b; c=1'", "dims=[256, 256]", "~algo.bc_steps",
                                    "name=hello world", "y=$\\{seed\\}", "q=\"it's\"", "seed=3", "threads=2",
                                    "hydra/launcher=submitit_slurm"]
    assert [override_key(o) for o in split_overrides(tag)][:4] == ["algo", "note", "dims", "algo.bc_steps"]
    assert computing_overrides(tag) == frozenset(split_overrides(tag)[:-2])  # not threads, not the launcher
    assert computing_overrides(tag) != computing_overrides(tag.replace("dims=[256, 256]", "dims=[256, 512]"))
    assert split_overrides("(defaults)") == [] and computing_overrides("(defaults)") == frozenset()
    assert split_overrides("x=[1, 2 seed=0") == ["x=[1, 2", "seed=0"]  # an open bracket: split at every space
    assert split_overrides("seed=0 dir=C:\\runs\\") == ["seed=0", "dir=C:\\runs\\"]  # a last backslash escapes nothing


def test_a_sweep_param_override_is_passed_as_hydra_takes_it():
    """``o2o-study NAME hydra.sweeper.params.seed=0,1`` (the help's example) reaches Hydra quoted; unquoted, Hydra
    stops with "Sweeping over Hydra's configuration is not supported"."""
    import subprocess
    import sys

    from o2o.cli import sweep_param

    assert sweep_param("hydra.sweeper.params.algo=cql,calql") == "++hydra.sweeper.params.algo='cql,calql'"
    assert sweep_param("+hydra.sweeper.params.tau=0.1,0.2") == "++hydra.sweeper.params.tau='0.1,0.2'"
    assert sweep_param("hydra.sweeper.params.algo='cql,calql'") == "++hydra.sweeper.params.algo='cql,calql'"
    assert sweep_param("hydra.sweeper.params.seed=3") == "++hydra.sweeper.params.seed=3"
    for unchanged in ("algo=cql", "env.gym_kwargs.maze_map=[1,0]", "-m"):
        assert sweep_param(unchanged) == unchanged
    shown = subprocess.run([sys.executable, "-m", "o2o.cli", "experiment=study/door_calibration/paper",
                            sweep_param("hydra.sweeper.params.algo=cql,calql"), "--cfg", "hydra"],
                           capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert shown.returncode == 0, shown.stderr
    assert "algo: cql,calql" in shown.stdout and "seed: 0,1,2,3,4" in shown.stdout
    # without a study preset (Hydra's params hold no key), typed as one would type it: -m after the overrides
    swept = subprocess.run([sys.executable, "src/main.py", "experiment=smoke", "-m", "hydra.sweeper.params.seed=0,1",
                            "algo=calql,cql", "--info", "searchpath"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert swept.returncode == 2 and swept.stderr.strip() == "error: --info and --multirun are two of Hydra's modes: " \
        "give one of them", swept.stderr
    shown = subprocess.run([sys.executable, "src/main.py", "experiment=smoke", "hydra.sweeper.params.seed=0,1",
                            "--cfg", "hydra"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert shown.returncode == 0 and "params:\n      seed: 0,1\n" in shown.stdout, shown.stderr


def test_a_study_records_its_commit_as_changed_only_where_code_changed(tmp_path, monkeypatch):
    """A part of a study writes its page into docs/results of the checkout it runs from; the next part's commit must
    not read as uncommitted changes for that, but does for any change to what it runs."""
    from o2o.study import checkout_commit, git_commit

    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)

    (tmp_path / "src").mkdir()
    (tmp_path / "docs" / "results").mkdir(parents=True)
    (tmp_path / "src" / "a.py").write_text("x = 1\n")
    (tmp_path / "docs" / "results" / "page.md").write_text("a page\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "one")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    assert checkout_commit(tmp_path / "src") == head  # from a subfolder too
    (tmp_path / "docs" / "results" / "page.md").write_text("the page a part wrote\n")
    assert checkout_commit(tmp_path / "src") == head
    (tmp_path / "src" / "a.py").write_text("x = 2\n")
    assert checkout_commit(tmp_path / "src") == head + " (with uncommitted changes)"
    # a study is o2o's code at o2o's commit, wherever it runs from; from a checkout of one's own, that one's too
    ours = checkout_commit(ROOT / "src" / "o2o")
    assert git_commit() == ours  # the suite runs from o2o's checkout
    monkeypatch.chdir(tmp_path / "src")
    assert git_commit() == f"{ours}; the folder it ran from, {tmp_path.resolve()}: {head} (with uncommitted changes)"
    monkeypatch.chdir(tmp_path.parent)  # not a checkout: o2o's alone
    assert git_commit() == ours


def test_what_a_part_of_a_sweep_did_is_read_from_the_store(tmp_path):
    """Counted from the runs' status and end time: one a hard kill left RUNNING in an earlier part is not claimed
    for this one, nor a failed one as finished."""
    from mlflow.tracking import MlflowClient

    from o2o.archive import ARCHIVED_TAG
    from o2o.study import this_part

    client = MlflowClient(f"sqlite:///{tmp_path / 'parts.db'}")
    experiment = client.create_experiment("o2o", artifact_location=(tmp_path / "art").as_uri())
    parent = client.create_run(experiment, tags={"sweep": "true"}).info.run_id
    started = 1_700_000_500_000

    def child(status, end=None, tags=None):
        run = client.create_run(experiment, start_time=1_700_000_000_000,
                                tags={"mlflow.parentRunId": parent, **(tags or {})})
        if status != "RUNNING":
            client.set_terminated(run.info.run_id, status=status, end_time=end)

    child("FINISHED", started - 1, {ARCHIVED_TAG: "a"})  # restored before the part began
    child("FINISHED", started - 1)  # finished in an earlier part
    child("RUNNING")  # killed hard in an earlier part
    child("FINISHED", started + 1)
    child("FAILED", started + 2)
    assert this_part(client, parent, started) == (
        "this part of the sweep: 1 runs finished; 1 ended unfinished (failed, interrupted or preempted: the same "
        "command continues the last two); 1 still marked running (killed hard, here or in an earlier part, or running "
        "elsewhere); 2 finished before and left as they were (1 restored from the study's records)")
