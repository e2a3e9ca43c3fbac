"""Scaling laws: the size rule and the fits, on synthetic losses with known exponents."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fewshot.config import PRESETS
from fewshot.errors import FewshotError
from fewshot.experiments.scaling.fits import fit_exponent, fit_power_law, isoflop_optimum
from fewshot.experiments.scaling.shapes import ladder, non_embedding_params
from fewshot.model import GPT

TEMPLATE = PRESETS["nano"].model


@given(sizes=st.integers(1, 9), step=st.floats(1.2, 4.0), smallest=st.floats(1e3, 1e7), head_size=st.sampled_from([8, 16, 32]),
       layers=st.sampled_from([0, 2, 3]))
@settings(max_examples=40, deadline=None)
def test_the_size_rule_gives_strictly_increasing_n(sizes: int, step: float, smallest: float, head_size: int, layers: int) -> None:
    shapes = ladder(sizes, TEMPLATE, smallest=smallest, step=step, head_size=head_size, layers=layers)
    n = [non_embedding_params(c) for c in shapes]
    assert len(n) == sizes and all(a < b for a, b in zip(n, n[1:]))
    assert all(c.d_model == c.n_head * head_size and c.hidden_size == 4 * c.d_model for c in shapes)
    if layers:  # a fixed depth: only the width changes
        assert {c.n_layer for c in shapes} == {layers}


def test_non_embedding_params_count_the_model_without_its_embeddings() -> None:
    config = ladder(2, TEMPLATE)[1]
    model = GPT(config)
    embeddings = model.token_embedding.weight.numel() + config.context * config.d_model
    assert non_embedding_params(config) == model.num_params() - embeddings
    assert non_embedding_params(config) == pytest.approx(12 * config.n_layer * config.d_model**2, rel=0.1)


@pytest.mark.parametrize("alpha, x_c, e", [(0.076, 8.8e13, 1.7), (0.3, 1e7, 2.0), (0.095, 5.4e13, 0.0)])
def test_the_fit_recovers_known_exponents_from_noisy_power_law_losses(alpha: float, x_c: float, e: float) -> None:
    rng = np.random.default_rng(0)
    x = np.geomspace(1e5, 1e9, 8)
    loss = (x_c / x) ** alpha + e
    noisy = loss * (1 + rng.normal(0, 0.002, len(x)))
    fit = fit_power_law(x, noisy, bootstrap=300)
    assert fit.alpha_ci95[0] <= alpha <= fit.alpha_ci95[1]
    assert fit.alpha == pytest.approx(alpha, rel=0.25)
    predicted, (low, high) = fit.predict(2e9)
    truth = (x_c / 2e9) ** alpha + e
    assert low <= truth <= high and predicted == pytest.approx(truth, rel=0.01)


def test_a_fit_needs_four_points() -> None:
    with pytest.raises(FewshotError, match="at least 4"):
        fit_power_law([1e5, 1e6, 1e7], [3.0, 2.5, 2.2])


def test_an_isoflop_profile_finds_its_optimum_and_the_exponent_of_n_opt() -> None:
    rng = np.random.default_rng(1)
    budgets, optima = [1e13, 1e14, 1e15], []
    for c in budgets:
        best = 0.1 * c**0.5  # Chinchilla: N_opt grows as C^0.5
        n = best * np.geomspace(0.2, 5, 7)
        loss = 0.08 * np.log(n / best) ** 2 + 3.0 + rng.normal(0, 0.001, len(n))
        found = isoflop_optimum(n, loss, bootstrap=300)
        assert found.n_ci95[0] <= best <= found.n_ci95[1] and found.n == pytest.approx(best, rel=0.1)
        optima.append(found.n)
    exponent = fit_exponent(budgets, optima, bootstrap=300)
    assert exponent.a == pytest.approx(0.5, abs=0.03)
    with pytest.raises(FewshotError, match="no minimum"):
        isoflop_optimum([1e6, 1e7, 1e8], [3.0, 2.5, 2.2])
    assert math.isfinite(exponent.a_ci95[0])


def test_compute_is_6nd_plus_the_head_and_attention() -> None:
    from fewshot.experiments.scaling.compute import kaplan_compute, model_flops

    config = ladder(3, TEMPLATE)[2]
    tokens, seq = 1e6, config.context
    assert kaplan_compute(config, tokens) == 6 * non_embedding_params(config) * tokens
    attention = 12 * config.n_layer * config.d_model * seq * tokens
    head = 6 * config.vocab_size * config.d_model * tokens
    assert model_flops(config, tokens, seq) == pytest.approx(kaplan_compute(config, tokens) + attention + head, rel=1e-9)


def test_a_plan_spends_each_budget_on_sizes_around_the_chinchilla_guess() -> None:
    from fewshot.experiments.scaling.plan import SweepConfig, plan

    config = SweepConfig(data="d", out="o", sizes=3, isoflop="1e12,3e11", per_budget=5, context=64, batch_size=4)
    points = plan(config, 260)
    ladder, isoflop = [p for p in points if p.kind == "ladder"], [p for p in points if p.kind == "isoflop"]
    assert [p.rung for p in ladder] == [0, 1, 2] and len({p.name for p in points}) == len(points)
    for p in ladder:  # D = 20 N, to within one step of 4 x 64 tokens
        assert abs(p.tokens(config) - 20 * p.n) <= 4 * 64 / 2
    assert [p.budget for p in isoflop] == [3e11] * 5 + [1e12] * 5
    for budget in (3e11, 1e12):
        sizes = [p.n for p in isoflop if p.budget == budget]
        assert sizes == sorted(sizes) and sizes[0] < math.sqrt(budget / 120) < sizes[-1]
        for p in isoflop:
            if p.budget == budget:  # C = 6 N D, to within one optimizer step
                assert abs(p.compute(config) - budget) <= 6 * p.n * 4 * 64 / 2
    small_heads = SweepConfig(data="d", out="o", isoflop="5e11", centre=2000, head_size=8)
    shapes = [(p.model.n_layer, p.model.d_model) for p in plan(small_heads, 256)]  # below the 16-wide rule's 2x16
    assert shapes[0] == (2, 8) and all(d % 8 == 0 for _, d in shapes)
    shallow = SweepConfig(data="d", out="o", isoflop="5e11", centre=1400, head_size=8, layers=2, per_budget=4)
    shapes = [(p.model.n_layer, p.model.d_model) for p in plan(shallow, 256)]  # the rule alone mixes 2-5 layers here
    assert shapes == [(2, 8), (2, 16), (2, 24), (2, 32)]
    centred = SweepConfig(data="d", out="o", isoflop="1e12", per_budget=3, centre=500, context=64, batch_size=4)
    sizes = [p.n for p in plan(centred, 260)]  # the middle size trains on about 500 tokens per parameter
    assert sizes[0] < math.sqrt(1e12 / 3000) < sizes[2] and 250 < 1e12 / (6 * sizes[1]) / sizes[1] < 1000
    fixed = SweepConfig(data="d", out="o", sizes=3, tokens=1e5, context=64, batch_size=4)  # Kaplan's L(N): one D for all
    assert {p.tokens(fixed) for p in plan(fixed, 260)} == {round(1e5 / 256) * 256}
