import numpy as np
import pytest
import torch

from o2o.buffers import MixedSampler, TransitionBuffer, offline_share


def filled(n, obs_value, capacity=None):
    buf = TransitionBuffer(capacity or n, obs_dim=2, act_dim=1, device=torch.device("cpu"))
    buf.add(np.full((n, 2), obs_value), np.zeros((n, 1)), np.arange(n), np.zeros((n, 2)), np.zeros(n), np.arange(n) * 2)
    return buf


@pytest.mark.parametrize("ratio, sizes, expected", [
    (0.5, (100, 10), 128), (0.25, (100, 10), 64), (1.0, (100, 10), 256), (0.0, (100, 10), 0),
    (-1, (300, 100), 192), (-1, (100, 0), 256), (0.5, (100, 0), 256),
])
def test_offline_share(ratio, sizes, expected):
    assert offline_share(256, ratio, *sizes) == expected


@pytest.mark.parametrize("ratio, offline_rows", [(0.5, 128), (0.25, 64), (-1, 192)])
def test_mixed_batches_hold_the_ratio(ratio, offline_rows):
    offline, online = filled(300, 1.0), filled(100, -1.0, capacity=1000)
    batch = MixedSampler(offline, online, 256, ratio).sample()
    assert batch.obs.shape == (256, 2)
    assert int((batch.obs[:, 0] == 1.0).sum()) == offline_rows
    assert int((batch.obs[:, 0] == -1.0).sum()) == 256 - offline_rows


def test_blocks_land_in_ring_order_with_every_field():
    """Blocks of any size (within, across the end of, and larger than the ring) against a plain list model."""
    rng = np.random.default_rng(0)
    buf, model, step = TransitionBuffer(7, obs_dim=2, act_dim=3, device=torch.device("cpu")), [], 0
    for n in [3, 2, 4, 1, 9, 7, 5]:
        block = [rng.normal(size=(n, 2)), rng.uniform(-1, 1, (n, 3)), rng.normal(size=n), rng.normal(size=(n, 2)),
                 rng.random(n) < 0.5, rng.normal(size=n)]
        rows = buf.add(*block).tolist()
        kept = list(range(max(0, n - 7), n))
        assert rows == [(step + i - kept[0]) % 7 for i in kept]
        for i, row in zip(kept, rows):
            expected = np.concatenate([block[0][i], block[1][i], [block[2][i]], block[3][i], [block[4][i]], [block[5][i]]])
            np.testing.assert_allclose(buf.storage[row].numpy(), expected.astype(np.float32))
        model = (model + [step + i for i in kept])[-7:]
        step += len(kept)
        assert len(buf) == len(model)


def test_fields_round_trip_and_ring_overwrites_oldest():
    buf = filled(5, 0.0, capacity=4)
    assert len(buf) == 4
    rewards = sorted(buf.batch(slice(0, buf.capacity)).rewards.tolist())
    assert rewards == [1.0, 2.0, 3.0, 4.0]  # reward 0 was overwritten
    batch = buf.batch(slice(0, buf.capacity))
    torch.testing.assert_close(batch.v_ref, batch.rewards * 2)
