"""Two sweeps of the same study side by side, per algorithm: each measure's mean with its 95% interval in each
sweep, and P(A > B) with its interval (o2o.statistics, rliable). For a learning check, e.g. the same study in bf16
(A) and fp32 (B): a probability whose interval holds 0.5 means no difference was detected at that many seeds.

    python scripts/compare_sweeps.py --experiment o2o bf16=<parent run id> fp32=<parent run id> [--out FILE]
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

MEASURES = {  # study_seeds's name -> what the table calls it
    "offline": "score after pre-training", "final": "score after fine-tuning", "regret": "cumulative regret",
    "gap": "Q(s, a~pi) - V_ref after pre-training", "bound_rate": "fraction of Q(s, a~pi) < V_ref",
    "below_v_ref": "fraction of Q(s, a_data) < V_ref",
}


def compare(seeds_a: dict, seeds_b: dict, label_a: str, label_b: str) -> list[str]:
    from o2o import statistics as S

    lines = [f"| algo | measure | {label_a} (seeds) | {label_b} (seeds) | P({label_a} > {label_b}) |",
             "|---|---|---|---|---|"]
    for algo in sorted(set(seeds_a) & set(seeds_b)):
        for key, name in MEASURES.items():
            a, b = seeds_a[algo].get(key, []), seeds_b[algo].get(key, [])
            n_a, n_b = (sum(not math.isnan(x) for x in v) for v in (a, b))
            if not n_a or not n_b:
                continue
            lines.append(f"| {algo} | {name} | {S.mean_interval(a).format(3)} ({n_a}) | "
                         f"{S.mean_interval(b).format(3)} ({n_b}) | {S.probability_of_improvement(a, b).format(2)} |")
    return lines


def main() -> None:
    from mlflow.tracking import MlflowClient

    from o2o.report import build_filter, load_runs
    from o2o.study import study_seeds
    from o2o.tracking import default_tracking_uri

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", default="o2o")
    parser.add_argument("--out", help="also write the table to this file")
    parser.add_argument("sweeps", nargs=2, metavar="LABEL=PARENT_RUN_ID")
    args = parser.parse_args()
    client = MlflowClient(default_tracking_uri())
    (label_a, parent_a), (label_b, parent_b) = (s.split("=", 1) for s in args.sweeps)
    seeds_a, seeds_b = (study_seeds(load_runs(client, args.experiment, build_filter(parent=p)))
                        for p in (parent_a, parent_b))
    text = "\n".join(compare(seeds_a, seeds_b, label_a, label_b))
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
