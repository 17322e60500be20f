"""Time to load a 1M-transition Minari dataset into the offline buffer, side by side with a plain h5py read
and Minari's own episode iterator over the same file: each in a fresh process, interleaved round by round,
the median kept.

    python scripts/bench_load.py --episodes 5000 --length 200 --rounds 3

Writes a synthetic dataset (door-sized observations and actions) under
``$MINARI_DATASETS_PATH`` (default: a temporary folder) the first time.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=5000)
    parser.add_argument("--length", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--measure", choices=READERS, help=argparse.SUPPRESS)  # one reader, in this process
    parser.add_argument("--dataset-id", help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.dataset_id, args.path)))
        return
    os.environ.setdefault("MINARI_DATASETS_PATH", tempfile.mkdtemp(prefix="o2o-bench-"))

    import minari
    from minari.data_collector import EpisodeBuffer

    from o2o.data.build.adroit import make_adroit

    dataset_id = f"o2o-bench/door/synthetic-{args.episodes}x{args.length}-v0"
    if dataset_id not in minari.list_local_datasets():
        rng = np.random.default_rng(0)
        start = time.perf_counter()
        buffers = [EpisodeBuffer(id=i, observations=rng.normal(size=(args.length + 1, 39)).astype(np.float32),
                                 actions=rng.uniform(-1, 1, (args.length, 28)).astype(np.float32),
                                 rewards=list(rng.normal(size=args.length)), terminations=[False] * args.length,
                                 truncations=[False] * (args.length - 1) + [True],
                                 infos={"success": rng.random(args.length + 1) < 0.1})
                   for i in range(args.episodes)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            minari.create_dataset_from_buffers(dataset_id, buffers, env=make_adroit("door").spec,
                                               algorithm_name="synthetic", author="o2o")
        print(f"wrote {dataset_id} in {time.perf_counter() - start:.1f} s")
    path = os.path.join(os.environ["MINARI_DATASETS_PATH"], dataset_id, "data", "main_data.hdf5")
    times: dict[str, list[dict]] = {reader: [] for reader in READERS}
    for _ in range(args.rounds):  # each reader in a fresh process (no heap or cache left by another), interleaved
        for reader in READERS:
            out = subprocess.run([sys.executable, __file__, "--measure", reader, "--dataset-id", dataset_id, "--path",
                                  path], check=True, capture_output=True, text=True, env=os.environ).stdout
            times[reader].append(json.loads(out.strip().splitlines()[-1]))
    median = {reader: {k: statistics.median(t[k] for t in runs) for k in runs[0]} for reader, runs in times.items()}
    ours = median["o2o"]
    print(f"{args.episodes * args.length} transitions in {args.episodes} episodes, {os.cpu_count()} cores, "
          f"median of {args.rounds} fresh processes each")
    print(f"o2o load_minari {ours['load']:.2f} s + returns-to-go {ours['returns']:.2f} s + buffer "
          f"{ours['buffer']:.2f} s = {ours['total']:.2f} s into the buffer")
    print(f"plain h5py read of the same arrays {median['plain']['total']:.2f} s; Minari iterate_episodes "
          f"{median['minari']['total']:.2f} s; o2o into the buffer / plain h5py read = "
          f"{ours['total'] / median['plain']['total']:.2f}")


READERS = ("o2o", "plain", "minari")


def measure(reader: str, dataset_id: str, path: str) -> dict:
    import h5py
    import minari
    import torch  # as in a run: imported before the data is read

    from o2o.buffers import TransitionBuffer
    from o2o.data.minari import load_minari
    from o2o.returns import returns_to_go

    start = time.perf_counter()
    if reader == "plain":  # the same arrays, read the plain h5py way
        with h5py.File(path, "r") as f:
            [[f[f"episode_{i}/{k}"][()] for k in ("observations", "actions", "rewards", "terminations", "truncations")]
             for i in range(len(f))]
        return {"total": time.perf_counter() - start}
    if reader == "minari":
        for _ in minari.load_dataset(dataset_id).iterate_episodes():
            pass
        return {"total": time.perf_counter() - start}
    data = load_minari(dataset_id, [], download=False)
    loaded = time.perf_counter()
    g = returns_to_go(data.rewards * 10 + 5, data.episode_ends, 0.99, fail_reward=-5.0)
    labelled = time.perf_counter()
    buffer = TransitionBuffer(len(data), data.observations.shape[1], data.actions.shape[1], torch.device("cpu"))
    buffer.add(data.observations, data.actions, data.rewards * 10 + 5, data.next_observations, data.terminals, g)
    done = time.perf_counter()
    return {"load": loaded - start, "returns": labelled - loaded, "buffer": done - labelled, "total": done - start}


if __name__ == "__main__":
    main()
