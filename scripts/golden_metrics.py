"""Every MLflow metric series of a fixed set of small runs, to show that a refactor changes no number.

    python scripts/golden_metrics.py record before.json          # on the old code
    python scripts/golden_metrics.py record after.json           # on the new code, same machine
    python scripts/golden_metrics.py compare before.json after.json

The runs cover each algorithm on both fine-tuning schedules, the intrinsic rewards, the learned references and
offline retraining (after and during fine-tuning), each at the smoke size in a fresh store. Timing series
(updates per second, MLflow's system metrics) differ between any two runs and are left out. ``--rename OLD=NEW``
compares a metric under a new name. Figures are exact: the same code on the same machine gives the same bits.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ["experiment=smoke", "threads=1", "env.dataset.collector.steps=1500", "mlflow.system_metrics=false",
         "mlflow.log_models=false", "progress=false"]
# the Q-conditioned k-NN bonus was exploration=sera before December 2026: record such a commit with
# O2O_GOLDEN_QKNN=sera
QKNN = os.environ.get("O2O_GOLDEN_QKNN", "qknn")
RUNS = {
    "calql_episode": ["algo=calql"],
    "cql_episode_rnd_retrain": ["algo=cql", "exploration=rnd", "retrain=same", "retrain.steps=30",
                                "retrain.interval=150"],
    "calql_episode_qknn_td": ["algo=calql", f"exploration={QKNN}", "exploration.coef=1.0", "reference=td",
                              "reference.fit_steps=50"],
    "calql_step_regression": ["algo=calql", "algo.update_schedule=step", "reference=regression",
                              "reference.fit_steps=50"],
    "iql_step": ["algo=iql"],
    "wsrl_step": ["algo=wsrl", "algo.utd_ratio=4"],  # the actor steps on 1 update in 4 (per-key metric means)
    "rlpd_step_rnd": ["algo=rlpd", "exploration=rnd", "retrain=same", "retrain.steps=30"],
    "calql_episode_ooo_retrain": ["algo=calql", "retrain=ooo", "retrain.steps=30", "retrain.eval_episodes=2"],
    "sac_step": ["algo=sac"],
    "sac_step_qknn_offline_data": ["algo=sac", "algo.mixing_ratio=0.5", f"exploration={QKNN}", "exploration.coef=0.5"],
    # intervals that are no divisor of the steps, and checkpoints: the tickers' every case
    "cql_episode_odd_intervals": ["algo=cql", "schedule.log_interval=7", "schedule.eval_interval_offline=13",
                                  "schedule.eval_interval_online=70", "schedule.checkpoint_interval=25"],
    "rlpd_step_odd_intervals": ["algo=rlpd", "schedule.log_interval=7", "schedule.eval_interval_online=70",
                                "schedule.checkpoint_interval=25", "retrain=same", "retrain.steps=20",
                                "retrain.interval=110"],
}
TIMING = ("updates_per_second", "system/")


def record(out: Path, only: list[str] | None) -> None:
    import mlflow

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "MINARI_DATASETS_PATH": f"{tmp}/minari", "O2O_OUTPUTS": f"{tmp}/out",
               "OMP_NUM_THREADS": "1"}
        for name, overrides in RUNS.items():
            if only and name not in only:
                continue
            store = f"sqlite:///{tmp}/{name}.db"
            cmd = [sys.executable, str(ROOT / "src" / "main.py"), *SMOKE, *overrides, f"hydra.run.dir={tmp}/runs/{name}"]
            done = subprocess.run(cmd, env={**env, "MLFLOW_TRACKING_URI": store}, capture_output=True, text=True)
            if done.returncode:
                sys.exit(f"{name} failed:\n{done.stderr[-3000:]}")
            client = mlflow.MlflowClient(store)
            (run,) = client.search_runs(client.get_experiment_by_name("o2o").experiment_id)
            series = {}
            for key in sorted(run.data.metrics):
                if any(t in key for t in TIMING):
                    continue
                series[key] = [[m.step, m.value] for m in sorted(client.get_metric_history(run.info.run_id, key),
                                                                 key=lambda m: (m.step, m.timestamp))]
            results[name] = series
            print(f"{name}: {len(series)} series, {sum(len(v) for v in series.values())} points", flush=True)
    out.write_text(json.dumps(results, indent=0, sort_keys=True))


def compare(before: Path, after: Path, renames: dict[str, str]) -> int:
    a, b = json.loads(before.read_text()), json.loads(after.read_text())
    problems = []
    for name in sorted(set(a) | set(b)):
        if name not in a or name not in b:
            problems.append(f"{name}: only in {'after' if name in b else 'before'}")
            continue
        old = {}
        for key, points in a[name].items():
            for source, target in renames.items():
                key = key.replace(source, target)
            old[key] = points
        new = b[name]
        for key in sorted(set(old) | set(new)):
            if key not in old or key not in new:
                problems.append(f"{name}: {key} only in {'after' if key in new else 'before'}")
            elif old[key] != new[key]:
                first = next(i for i, (p, q) in enumerate(zip(old[key] + [None], new[key] + [None])) if p != q)
                problems.append(f"{name}: {key} differs from point {first}")
        print(f"{name}: {len(new)} series compared")
    print("\n".join(problems) or "identical: every series, every point")
    return 1 if problems else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record")
    rec.add_argument("out", type=Path)
    rec.add_argument("--only", nargs="*")
    cmp_ = sub.add_parser("compare")
    cmp_.add_argument("before", type=Path)
    cmp_.add_argument("after", type=Path)
    cmp_.add_argument("--rename", nargs="*", default=[], help="OLD=NEW: a metric name's part renamed since 'before'")
    args = parser.parse_args()
    if args.command == "record":
        record(args.out, args.only)
    else:
        sys.exit(compare(args.before, args.after, dict(r.split("=", 1) for r in args.rename)))


if __name__ == "__main__":
    main()
