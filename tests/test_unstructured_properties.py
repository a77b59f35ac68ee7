"""Property tests (hypothesis) for unstructured pruning: exact kept counts, idempotent and nested masks,
pruned weights staying pruned under SGD with momentum and weight decay, Minimum Threshold invariants."""

from __future__ import annotations

import warnings
from fractions import Fraction

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from prunelab.prune.unstructured import (
    LayerCollapseWarning,
    MaskCallback,
    PruneConfig,
    get_mask,
    minimum_threshold,
    prune,
)
from prunelab.prune.unstructured.allocation import mt_capacity

torch.set_num_threads(1)

widths = st.lists(st.integers(1, 12), min_size=2, max_size=5)
sparsities = st.floats(0.0, 0.99, allow_nan=False)
methods = st.sampled_from(["global", "uniform", "random", "random-uniform"])


def build(ws: list[int], seed: int, ties: bool) -> nn.Sequential:
    g = torch.Generator().manual_seed(seed)
    layers = [nn.Linear(a, b) for a, b in zip(ws, ws[1:])]
    with torch.no_grad():
        for m in layers:
            if ties:  # few distinct magnitudes: many ties at the threshold
                m.weight.copy_(torch.randint(-2, 3, m.weight.shape, generator=g).float())
            else:
                m.weight.copy_(torch.randn(m.weight.shape, generator=g))
    return nn.Sequential(*[x for m in layers for x in (m, nn.ReLU())][:-1])


def linears(model):
    return [m for m in model if isinstance(m, nn.Linear)]


def quiet_prune(model, cfg):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LayerCollapseWarning)
        return prune(model, cfg)


@settings(max_examples=40, deadline=None)
@given(widths, sparsities, st.integers(0, 1000), st.booleans())
def test_global_keeps_exactly_round_of_remaining(ws, s, seed, ties):
    model = build(ws, seed, ties)
    n = sum(m.weight.numel() for m in linears(model))
    report = quiet_prune(model, PruneConfig("global", s))
    expected = round((1 - Fraction(repr(s))) * n)
    assert report.kept == expected
    assert sum(int(get_mask(m).sum()) for m in linears(model)) == expected
    kept_mags = torch.cat([m.weight[get_mask(m)].abs() for m in linears(model)])
    pruned_orig = torch.cat([build(ws, seed, ties)[2 * i].weight[~get_mask(m)].abs()
                             for i, m in enumerate(linears(model))])
    if kept_mags.numel() and pruned_orig.numel():
        assert kept_mags.min() >= pruned_orig.max()  # magnitude order respected across layers


@settings(max_examples=30, deadline=None)
@given(widths, sparsities, sparsities, st.integers(0, 1000), st.booleans(), methods)
def test_masks_idempotent_and_nested(ws, s1, s2, seed, ties, method):
    lo, hi = sorted((s1, s2))
    model = build(ws, seed, ties)
    quiet_prune(model, PruneConfig(method, lo, seed=seed))
    first = [get_mask(m).clone() for m in linears(model)]
    weights = [m.weight.detach().clone() for m in linears(model)]
    quiet_prune(model, PruneConfig(method, lo, seed=seed))
    assert all(torch.equal(a, get_mask(m)) for a, m in zip(first, linears(model)))
    assert all(torch.equal(w, m.weight) for w, m in zip(weights, linears(model)))
    quiet_prune(model, PruneConfig(method, hi, seed=seed))
    for a, m in zip(first, linears(model)):
        assert not torch.any(get_mask(m) & ~a)  # a higher sparsity only removes more


class _Trainer:
    def __init__(self, model, optimizer):
        self.model, self.optimizer = model, optimizer


@settings(max_examples=20, deadline=None)
@given(widths, sparsities, st.integers(0, 1000), st.integers(1, 6), st.booleans())
def test_pruned_stays_pruned_under_sgd_momentum_weight_decay(ws, s, seed, steps, nesterov):
    model = build(ws, seed, ties=False)
    quiet_prune(model, PruneConfig("global", s))
    masks = [get_mask(m).clone() for m in linears(model)]
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=nesterov, weight_decay=0.01)
    cb = MaskCallback()
    trainer = _Trainer(model, opt)
    cb.on_fit_start(trainer)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(4, ws[0], generator=g)
        opt.zero_grad()
        model(x).tanh().square().mean().backward()  # bounded: no divergence to inf/NaN
        opt.step()
        cb.on_step_end(trainer)
    for m, mask in zip(linears(model), masks):
        assert torch.equal(get_mask(m), mask)
        assert torch.all(m.weight[~mask] == 0)
        assert torch.all(opt.state[m.weight]["momentum_buffer"][~mask] == 0)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 300), min_size=1, max_size=8), st.data())
def test_minimum_threshold_invariants(sizes, data):
    sigma = data.draw(st.integers(0, max(sizes)))
    global_pruned = [data.draw(st.integers(0, n)) for n in sizes]
    target = data.draw(st.integers(0, mt_capacity(sizes, sigma)))
    feasible_by_scaling = sum(n - sigma for n, p in zip(sizes, global_pruned) if n > sigma and p > 0) >= target
    try:
        result = minimum_threshold(sizes, global_pruned, sigma, target)
    except ValueError:
        assert not feasible_by_scaling
        return
    assert sum(result.pruned) == target
    for n, p, g in zip(sizes, result.pruned, global_pruned):
        assert 0 <= p <= n
        if n <= sigma:
            assert p == 0
        else:
            assert n - p >= sigma
            if g == 0:
                assert p == 0  # proportional: a layer global MP leaves dense stays dense
