import copy

import torch

from trainer.optim import PaperSGD, make


def _params(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(4, 3, generator=g, requires_grad=True),
            torch.randn(5, generator=g, requires_grad=True)]


def _grads(step):
    g = torch.Generator().manual_seed(100 + step)
    return [torch.randn(4, 3, generator=g), torch.randn(5, generator=g)]


def _run(opt, params, lrs):
    for step, lr in enumerate(lrs):
        for group in opt.param_groups:
            group["lr"] = lr
        for p, g in zip(params, _grads(step)):
            p.grad = g.clone()
        opt.step()
    return [p.detach().clone() for p in params]


def test_paper_rule_written_out():
    """§5: v <- 0.9 v - 0.0005 eps w - eps g; w <- w + v, with an lr drop in the middle."""
    lrs = [0.01, 0.01, 0.001, 0.001]
    params = _params()
    got = _run(PaperSGD(params, lr=lrs[0], momentum=0.9, weight_decay=5e-4), params, lrs)
    w = [p.detach().clone() for p in _params()]
    v = [torch.zeros_like(x) for x in w]
    for step, eps in enumerate(lrs):
        for i, g in enumerate(_grads(step)):
            v[i] = 0.9 * v[i] - 0.0005 * eps * w[i] - eps * g
            w[i] = w[i] + v[i]
    for a, b in zip(got, w):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_same_as_torch_sgd_at_constant_lr_and_not_after_a_drop():
    constant = [0.01] * 4
    a = _run(make("paper", (p := _params()), 0.01, 0.9, 5e-4), p, constant)
    b = _run(make("torch", (q := _params()), 0.01, 0.9, 5e-4), q, constant)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)
    drop = [0.01, 0.01, 0.001, 0.001]
    a = _run(make("paper", (p := _params()), 0.01, 0.9, 5e-4), p, drop)
    b = _run(make("torch", (q := _params()), 0.01, 0.9, 5e-4), q, drop)
    assert max((x - y).abs().max().item() for x, y in zip(a, b)) > 1e-4


def test_state_dict_round_trip_continues_identically():
    params = _params()
    opt = PaperSGD(params, lr=0.01, momentum=0.9, weight_decay=5e-4)
    _run(opt, params, [0.01, 0.01])
    state = copy.deepcopy(opt.state_dict())  # as a checkpoint would hold it
    again = [p.detach().clone().requires_grad_() for p in params]
    opt2 = PaperSGD(again, lr=0.01, momentum=0.9, weight_decay=5e-4)
    opt2.load_state_dict(state)
    for x, y in zip(_run(opt, params, [0.01]), _run(opt2, again, [0.01])):
        assert torch.equal(x, y)


def _two_devices(seed=0):
    """A two-column replica in miniature: parameters on the CPU and on "meta" (a second device that
    computes nothing), interleaved as a model's parameters are (conv1.0, conv1.1, ...)."""
    cpu = _params(seed)
    meta = [torch.empty(shape, device="meta", requires_grad=True) for shape in ((4, 3), (5,))]
    return [cpu[0], meta[0], cpu[1], meta[1]]


def test_paper_sgd_launches_foreach_kernels_per_device(monkeypatch):
    """Mixed-device lists make every foreach op fall back to one kernel per tensor: each call must
    hold one device's tensors, and the CPU ones update exactly as without the other device."""
    seen = []
    for name in ("_foreach_mul_", "_foreach_add_"):
        real = getattr(torch, name)

        def record(tensors, *args, real=real, **kwargs):
            lists = [tensors] + [a for a in args if isinstance(a, list)]
            seen.append({t.device.type for ts in lists for t in ts})
            return real(tensors, *args, **kwargs)

        monkeypatch.setattr(torch, name, record)
    params = _two_devices()
    opt = make("paper", params, 0.01, 0.9, 5e-4)
    assert len(opt.param_groups) == 1  # the state dict does not depend on the placement
    for step in range(2):
        g0, g1 = _grads(step)
        for p, g in zip(params, (g0, g0, g1, g1)):
            p.grad = g.to(p.device)
        opt.step()
    assert len(seen) == 2 * 2 * 4  # 2 steps x 2 devices x 4 foreach ops
    assert all(len(devices) == 1 for devices in seen)
    alone = _params()
    _run(make("paper", alone, 0.01, 0.9, 5e-4), alone, [0.01, 0.01])
    assert torch.equal(params[0], alone[0]) and torch.equal(params[2], alone[1])
