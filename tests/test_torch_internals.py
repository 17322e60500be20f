"""Each private PyTorch setting or function the updates use (o2o.agents.torch_internals), called and checked for its
effect: a PyTorch upgrade that removes or changes one fails here by name."""
import warnings

import pytest
import torch

from o2o.agents import torch_internals as internals
from o2o.agents.compiled import adam_


def test_inductor_calls_eager_rng_sets_the_inductor_flag():
    import torch._inductor.config as inductor_config

    saved = inductor_config.fallback_random
    try:
        inductor_config.fallback_random = False
        internals.inductor_calls_eager_rng()
        assert inductor_config.fallback_random is True
    finally:
        inductor_config.fallback_random = saved


def test_an_unknown_inductor_key_would_raise_rather_than_pass_silently():
    import torch._inductor.config as inductor_config

    with pytest.raises(AttributeError):
        inductor_config.no_such_setting_o2o = True


def test_allow_recompiles_raises_both_dynamo_limits():
    config = torch._dynamo.config
    saved = config.recompile_limit, config.accumulated_recompile_limit
    try:
        config.recompile_limit, config.accumulated_recompile_limit = 8, 256
        internals.allow_recompiles(1024)
        assert config.recompile_limit == 1024 and config.accumulated_recompile_limit == 4096
        internals.allow_recompiles(16)  # never lowers them
        assert config.recompile_limit == 1024
    finally:
        config.recompile_limit, config.accumulated_recompile_limit = saved


def test_mark_static_address_marks_the_tensor():
    t = torch.zeros(3)
    internals.mark_static_address(t)
    assert getattr(t, "_dynamo_static_input_type", None) is not None


def test_record_optimizer_step_is_what_lr_schedulers_check():
    param = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.Adam([param], lr=1e-3)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, 10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "lr_scheduler.step() before optimizer.step()" if the flag is not read
        internals.record_optimizer_step(optimizer)
        scheduler.step()
    fresh = torch.optim.Adam([torch.nn.Parameter(torch.zeros(2))], lr=1e-3)
    with pytest.warns(UserWarning, match="optimizer.step"):  # the check exists: without the flag it warns
        torch.optim.lr_scheduler.CosineAnnealingLR(fresh, 10).step()


def test_foreach_ops_compute_what_their_names_say():
    a, b = [torch.ones(2), torch.full((3,), 2.0)], [torch.full((2,), 3.0), torch.zeros(3)]
    internals.foreach_lerp_(a, b, 0.5)
    assert a[0].tolist() == [2.0, 2.0] and a[1].tolist() == [1.0] * 3
    internals.foreach_add_(a, 1.0)
    internals.foreach_mul_(a, 2.0)
    assert a[0].tolist() == [6.0, 6.0]
    internals.foreach_addcmul_(a, b, b, 0.5)
    assert a[0].tolist() == [10.5, 10.5] and a[1].tolist() == [4.0] * 3


def test_the_hand_written_adam_equals_torch_optim_adam():
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(5))]
    mine = [p.detach().clone() for p in params]
    optimizer = torch.optim.Adam([{"params": [params[0]], "lr": 1e-2}, {"params": [params[1]], "lr": 3e-3}])
    exp_avgs, exp_avg_sqs = [torch.zeros_like(p) for p in mine], [torch.zeros_like(p) for p in mine]
    steps = [torch.zeros(()) for _ in mine]
    for _ in range(5):
        grads = [torch.randn_like(p) for p in mine]
        for p, g in zip(params, grads):
            p.grad = g.clone()
        optimizer.step()
        adam_(mine, grads, exp_avgs, exp_avg_sqs, steps, torch.tensor([1e-2, 3e-3]))
    for p, q in zip(params, mine):
        torch.testing.assert_close(q, p.detach(), rtol=1e-6, atol=1e-7)
