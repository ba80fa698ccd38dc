"""grow_init="gradient": the probe's gradients and sketches, and the rows it informs, on
hand-made inputs (the behaviour in training: test_allocation_behaviour.py)."""

import torch
from torch import nn

from dynalora.allocation.grow_init import SKETCH, GradientProbe, informed_rows


def test_the_probe_folds_the_full_weight_gradient_in_float32_and_sketches_wide_layers():
    torch.manual_seed(0)
    layers = {"narrow": nn.Linear(8, 16), "wide": nn.Linear(8, SKETCH + 40)}
    probe = GradientProbe(layers)
    probe.attach(seed=5)
    x = torch.randn(2, 3, 8)
    outputs = {}
    with torch.autocast("cpu", dtype=torch.bfloat16):  # a user loop with backward inside autocast
        for name, layer in layers.items():
            outputs[name] = layer(x)
        loss = sum((o.float() ** 2).sum() for o in outputs.values())
        loss.backward()
    probe.detach()
    grads = probe.take()
    assert not probe.attached and probe.take() == {}
    for name, layer in layers.items():
        g = (2 * outputs[name].float()).reshape(-1, layer.out_features)
        exact = g.T @ x.reshape(-1, 8)
        want = exact if name == "narrow" else probe.sketches[name].T @ exact
        assert grads[name].dtype == torch.float32
        torch.testing.assert_close(grads[name], want, rtol=2e-2, atol=2e-2)
    assert grads["wide"].shape == (SKETCH, 8)
    again = GradientProbe(layers)
    again.attach(seed=5)
    assert torch.equal(again.sketches["wide"], probe.sketches["wide"])  # the same in every process


def test_a_sketch_finds_the_same_top_directions_as_the_full_gradient():
    torch.manual_seed(1)
    out, d = 400, 32
    u = torch.linalg.qr(torch.randn(out, 3))[0]
    v = torch.linalg.qr(torch.randn(d, 3))[0]
    G = u @ torch.diag(torch.tensor([10.0, 5.0, 2.5])) @ v.T + 0.01 * torch.randn(out, d)
    omega = torch.randn(out, SKETCH) / SKETCH ** 0.5
    rows = informed_rows(omega.T @ G, torch.zeros(0, d), torch.randn(3, d))
    cosines = (rows / rows.norm(dim=1, keepdim=True) @ v).abs().diagonal()
    assert bool((cosines > 0.99).all()), cosines


def test_rows_stay_random_for_a_non_finite_gradient_and_a_zero_row_of_a_removes_nothing():
    random_rows = torch.randn(2, 6)
    bad = torch.zeros(4, 6)
    for value in (float("inf"), float("nan")):  # NaN makes torch's SVD raise
        bad[0, 0] = value
        assert torch.equal(informed_rows(bad, torch.zeros(1, 6), random_rows), random_rows)
    G = torch.zeros(4, 6)
    G[0, 0] = 1.0  # the only direction the gradient has is e0
    A = torch.zeros(2, 6)
    A[1, 3] = 1.0  # A covers e3 and has a zero row
    rows = informed_rows(G, A, random_rows)
    assert abs(float(rows[0, 0])) == float(random_rows[0].norm())
