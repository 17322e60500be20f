"""``o2o-data``: build local datasets from the DAPG assets and list the datasets a run can use.

    o2o-data build-adroit --assets ../shared/data/hand_dapg      # the assets as .npz arrays
    o2o-data build-adroit --assets ~/src/hand_dapg               # a clone of aravindr93/hand_dapg (its pickles)
    o2o-data list
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import yaml

from o2o.data.build.awac_recipe import AWAC_BC_ROLLOUTS
from o2o.data.build.adroit import D4RL_CLONED_EPISODES, D4RL_EXPERT_EPISODES, TASKS, build
from o2o.data.minari import OFFICIAL_NAMESPACES, minari_root
from o2o.data import ogbench
from o2o.errors import DatasetError, OneLineParser, UserError
from o2o.tracking import check_writable_folder



def env_dataset_ids() -> dict[str, str]:
    """The remote dataset id each env option uses by default."""
    from importlib.resources import files

    ids = {}
    for entry in sorted(files("o2o_conf").joinpath("env").iterdir(), key=lambda p: p.name):
        if entry.name.endswith(".yaml"):
            cfg = yaml.safe_load(entry.read_text()) or {}
            dataset_id = (cfg.get("dataset") or {}).get("id")
            if dataset_id:
                ids.setdefault(dataset_id, entry.name[:-5])
    return ids


def list_datasets() -> list[dict]:
    import minari

    rows, local = [], minari.list_local_datasets()
    for dataset_id, meta in sorted(local.items()):
        spec = meta.get("env_spec")
        env_id = getattr(spec, "id", None) or (spec.get("id") if isinstance(spec, dict) else None) or "?"
        if isinstance(spec, str):
            import json

            env_id = json.loads(spec).get("id", "?")
        rows.append({"id": dataset_id, "where": "local", "env": env_id, "episodes": meta.get("total_episodes"),
                     "transitions": meta.get("total_steps"), "ref_min_score": meta.get("ref_min_score"),
                     "ref_max_score": meta.get("ref_max_score")})
    for dataset_id, env_option in env_dataset_ids().items():
        if dataset_id not in local:
            rows.append({"id": dataset_id, "where": "remote" if dataset_id.startswith(("D4RL/", "mujoco/")) else "built on first use",
                         "env": f"env={env_option}", "episodes": None, "transitions": None,
                         "ref_min_score": None, "ref_max_score": None})
    return rows


def _print_table(rows: list[dict]) -> None:
    columns = ["id", "where", "env", "episodes", "transitions", "ref_min_score", "ref_max_score"]
    text = [[("-" if r[c] is None else f"{r[c]:.4g}" if isinstance(r[c], float) else str(r[c])) for c in columns]
            for r in rows]
    widths = [max(len(c), *(len(t[i]) for t in text)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for t in text:
        print("  ".join(v.ljust(w) for v, w in zip(t, widths)))


def _count(text: str, least: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"{value} is below {least}")
    return value


def positive(text: str) -> int:
    return _count(text, 1)


def at_least_zero(text: str) -> int:
    return _count(text, 0)


def at_least_zero_float(text: str) -> float:
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text} is not a finite number >= 0")
    return value


BUILD_RECORD = "o2o_build.json"  # beside a built dataset's data/: the command that builds it again


def recipe(args, dataset_id: str) -> list[str]:
    """The ``o2o-data`` arguments that build ``dataset_id`` again (its task alone; the assets where they are found)."""
    task = dataset_id.split("/")[-2]
    argv = ["build-adroit", "--namespace", args.namespace, "--tasks", task, "--seed", str(args.seed),
            "--bc-steps", str(args.bc_steps), "--bc-noise", str(args.bc_noise),
            "--reference-episodes", str(args.reference_episodes), "--awac-rollouts", str(args.awac_rollouts)]
    return argv + (["--d4rl-size"] if args.d4rl_size else ["--expert-episodes", str(args.expert_episodes),
                                                            "--cloned-episodes", str(args.cloned_episodes)])


def write_build_record(dataset_id: str, argv: list[str]) -> None:
    import json

    folder = Path(minari_root()) / dataset_id
    if folder.is_dir():
        (folder / BUILD_RECORD).write_text(json.dumps({"o2o-data": argv}) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = OneLineParser(prog="o2o-data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build-adroit", help="build Adroit datasets from the DAPG policies and demonstrations")
    b.add_argument("--assets", default="../shared/data/hand_dapg",
                   help="a clone of aravindr93/hand_dapg (its dapg/policies and dapg/demonstrations pickles), or a "
                        "folder of the same numbers as .npz arrays (../shared/data/hand_dapg)")
    b.add_argument("--namespace", default="o2o", help="Minari namespace (never an official one such as D4RL)")
    b.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    b.add_argument("--expert-episodes", type=positive, default=50)
    b.add_argument("--cloned-episodes", type=at_least_zero, default=50, help="BC episodes mixed with the 25 demonstrations")
    b.add_argument("--d4rl-size", action="store_true",
                   help=f"D4RL's sizes: {D4RL_EXPERT_EPISODES} expert and {D4RL_CLONED_EPISODES} cloned episodes")
    b.add_argument("--awac-rollouts", type=at_least_zero, default=AWAC_BC_ROLLOUTS,
                   help="BC rollouts of o2o/door/awac-recipe-v0 (AWAC's files hold 500); 0 skips that dataset")
    b.add_argument("--bc-steps", type=positive, default=2000)
    b.add_argument("--bc-noise", type=at_least_zero_float, default=0.1)
    b.add_argument("--reference-episodes", type=positive, default=10)
    b.add_argument("--seed", type=at_least_zero, default=0)
    b.add_argument("--awac-bc-weights", metavar="FILE",
                   help="the AWAC-recipe BC policy an earlier build kept (o2o_awac_bc.npz beside its data), rolled "
                        "out instead of a new fit (one task); docs/data.md: what it makes reproducible")
    b.add_argument("--overwrite", action="store_true")
    g = sub.add_parser("build-ogbench", help="build an OGBench manipulation dataset with the ogbench package's "
                                            "oracles (OGBench's recipe; o2o.data.ogbench)")
    g.add_argument("--env", required=True, choices=list(ogbench.TASK_ENVS))
    g.add_argument("--type", default="play", choices=["play", "noisy"], help="OGBench's dataset type")
    g.add_argument("--visual", action="store_true", help="64x64 RGB frames (the visual-* env; rendered, slow on a CPU)")
    g.add_argument("--episodes", type=positive, default=ogbench.OGBENCH_EPISODES,
                   help=f"trajectories (OGBench's: {ogbench.OGBENCH_EPISODES})")
    g.add_argument("--episode-steps", type=positive, default=ogbench.OGBENCH_EPISODE_STEPS,
                   help=f"steps per trajectory (OGBench's: {ogbench.OGBENCH_EPISODE_STEPS})")
    g.add_argument("--seed", type=at_least_zero, default=0)
    g.add_argument("--out", help="folder (default: OGBENCH_DATASETS_PATH, else ~/.ogbench/data)")
    g.add_argument("--overwrite", action="store_true")
    sub.add_parser("list", help="local datasets and the remote ids the env options use")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    try:  # the folder a command writes in (or, for list, reads), before any work
        if args.command == "build-ogbench":
            check_writable_folder(args.out or str(ogbench.ogbench_dir()),
                                  "--out" if args.out else "OGBench's datasets folder (OGBENCH_DATASETS_PATH)")
        elif args.command == "build-adroit":
            check_writable_folder(minari_root(), "the Minari datasets folder (MINARI_DATASETS_PATH)")
        elif args.command == "list" and Path(minari_root()).exists() and not Path(minari_root()).is_dir():
            raise DatasetError(f"the Minari datasets folder (MINARI_DATASETS_PATH) {minari_root()} is a file: "
                               "name a folder")
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    if args.command == "build-ogbench":
        try:
            path = ogbench.build_dataset(args.env, args.type, args.visual, args.episodes, args.episode_steps,
                                         args.seed, out_dir=Path(args.out) if args.out else None,
                                         overwrite=args.overwrite)
        except DatasetError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)
        print(f"{path}: env.dataset.ogbench={path.stem}" + ("" if not args.out else f" (OGBENCH_DATASETS_PATH={args.out})"))
        return

    if args.command == "list":
        print(f"local datasets: {minari_root()}")
        _print_table(list_datasets())
        return
    if args.namespace.split("/")[0] in OFFICIAL_NAMESPACES:
        parser.error(f"--namespace {args.namespace} is an official one; choose your own")
    if not Path(args.assets).is_dir():
        parser.error(f"--assets {args.assets} is not a folder (a clone of aravindr93/hand_dapg, or one holding "
                     "door-v0_expert_policy.npz, ...)")
    weights = None
    if args.awac_bc_weights:
        if len(args.tasks) != 1 or not Path(args.awac_bc_weights).is_file():
            parser.error(f"--awac-bc-weights {args.awac_bc_weights} needs one task (--tasks) and an existing file")
        weights = {args.tasks[0]: Path(args.awac_bc_weights)}
    expert, cloned = (D4RL_EXPERT_EPISODES, D4RL_CLONED_EPISODES) if args.d4rl_size else (
        args.expert_episodes, args.cloned_episodes)
    try:
        report = build(args.assets, args.namespace, args.tasks, expert, cloned, args.bc_steps, args.bc_noise,
                       args.reference_episodes, args.seed, args.overwrite, args.awac_rollouts,
                       awac_bc_weights=weights)
    except DatasetError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    for dataset_id, summary in report.items():
        if not summary.get("skipped"):
            write_build_record(dataset_id, recipe(args, dataset_id))
        if summary.get("skipped"):
            print(f"{dataset_id}: exists, skipped")
        else:
            print(f"{dataset_id}: {summary['episodes']} episodes, {summary['transitions']} transitions, "
                  f"mean return {summary['mean_return']:.1f}, success rate {summary['success_rate']:.2f}, "
                  f"ref scores {summary['ref_min_score']:.1f} / {summary['ref_max_score']:.1f}")
    print(f"written under {minari_root()}; use one with e.g. env=adroit_door env.dataset.id={args.namespace}/door/cloned-v0")


if __name__ == "__main__":
    main()
