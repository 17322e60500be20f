"""Time to load a 1M-transition Minari dataset into the offline buffer, side by side with a plain h5py read
and Minari's own episode iterator over the same file.

    python scripts/bench_load.py --episodes 5000 --length 200

Writes a synthetic dataset (door-sized observations and actions) under
``$MINARI_DATASETS_PATH`` (default: a temporary folder) the first time.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=5000)
    parser.add_argument("--length", type=int, default=200)
    args = parser.parse_args()
    os.environ.setdefault("MINARI_DATASETS_PATH", tempfile.mkdtemp(prefix="o2o-bench-"))

    import minari
    from minari.data_collector import EpisodeBuffer

    from o2o.data.build.adroit import make_adroit
    from o2o.data.dataset import episode_slices, load_minari
    from o2o.returns import returns_to_go

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
    import h5py
    import torch

    from o2o.buffers import TransitionBuffer

    path = os.path.join(os.environ["MINARI_DATASETS_PATH"], dataset_id, "data", "main_data.hdf5")
    start = time.perf_counter()
    with h5py.File(path, "r") as f:  # the same arrays, read the plain h5py way
        plain = [[f[f"episode_{i}/{k}"][()] for k in ("observations", "actions", "rewards", "terminations",
                                                      "truncations")] for i in range(args.episodes)]
    plain_s = time.perf_counter() - start
    del plain
    start = time.perf_counter()
    for _ in minari.load_dataset(dataset_id).iterate_episodes():
        pass
    minari_s = time.perf_counter() - start

    start = time.perf_counter()
    data = load_minari(dataset_id, [], download=False)
    loaded = time.perf_counter()
    g = returns_to_go(data.rewards * 10 + 5, data.episode_ends, 0.99, fail_reward=-5.0)
    labelled = time.perf_counter()
    buffer = TransitionBuffer(len(data), data.observations.shape[1], data.actions.shape[1], torch.device("cpu"))
    buffer.add(data.observations, data.actions, data.rewards * 10 + 5, data.next_observations, data.terminals, g)
    done = time.perf_counter()
    print(f"{len(data)} transitions in {len(episode_slices(data.episode_ends))} episodes")
    print(f"o2o load_minari {loaded - start:.2f} s + returns-to-go {labelled - loaded:.2f} s + buffer "
          f"{done - labelled:.2f} s = {done - start:.2f} s into the buffer")
    print(f"plain h5py read of the same arrays {plain_s:.2f} s; Minari iterate_episodes {minari_s:.2f} s; "
          f"load_minari / plain h5py = {(loaded - start) / plain_s:.2f}")


if __name__ == "__main__":
    main()
