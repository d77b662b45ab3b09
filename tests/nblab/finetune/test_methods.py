"""The merging methods on hand-built state dicts: each against its paper's definition."""

from __future__ import annotations

import pytest
import torch

from nblab.merge import methods


def _state(*values, key="w") -> dict[str, torch.Tensor]:
    return {key: torch.tensor(values, dtype=torch.float32)}


def _random_states(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    shapes = {"a.weight": (4, 6), "b.weight": (5,), "steps": ()}

    def one():
        s = {k: torch.randn(shape, generator=g) for k, shape in shapes.items() if k != "steps"}
        s["steps"] = torch.tensor(7)  # an integer buffer: taken from the first member
        return s

    return one(), [one() for _ in range(n)]


def test_the_uniform_soup_of_identical_members_is_the_member_exactly():
    _, (member,) = _random_states(1)
    soup = methods.uniform([member, member, member])
    assert all(torch.equal(soup[k], member[k]) for k in member)


def test_task_arithmetic_with_lam_one_over_n_is_the_uniform_soup():
    base, members = _random_states(4)
    ta = methods.task_arithmetic(base, members, 1 / 4)
    soup = methods.uniform(members)
    for k in ("a.weight", "b.weight"):
        torch.testing.assert_close(ta[k], soup[k], rtol=0, atol=1e-6)
    assert torch.equal(ta["steps"], members[0]["steps"])


def test_dare_with_p_zero_equals_task_arithmetic():
    base, members = _random_states(3)
    dare = methods.dare(base, members, p=0.0, then="task-arithmetic", lam=0.7, density=0.2, seed=3)
    ta = methods.task_arithmetic(base, members, 0.7)
    assert all(torch.equal(dare[k], ta[k]) for k in ta)
    dare_ties = methods.dare(base, members, p=0.0, then="ties", lam=1.0, density=0.5, seed=3)
    ties = methods.ties(base, members, density=0.5, lam=1.0)
    assert all(torch.equal(dare_ties[k], ties[k]) for k in ties)


def test_dare_drops_p_of_each_task_vector_and_rescales_the_rest():
    base = {"w": torch.zeros(20_000)}
    member = {"w": torch.full((20_000,), 2.0)}
    (kept,) = methods.dare_vectors(methods.task_vectors(base, [member]), p=0.9, seed=0)
    dropped = float((kept["w"] == 0).float().mean())
    assert abs(dropped - 0.9) < 0.01
    assert torch.allclose(kept["w"][kept["w"] != 0], torch.tensor(20.0))  # 2 / (1 - 0.9)
    assert abs(float(kept["w"].mean()) - 2.0) < 0.1  # the expectation is kept


def test_ties_on_hand_built_vectors_gives_the_hand_worked_result():
    """Base 1 everywhere; task vectors over two tensors (trimmed over the whole vector):
         tau1 = [ 3,  1 | -2, 0.1]   top 50%: [ 3,  0 | -2, 0]
         tau2 = [ 1, -4 |  5, 0.2]            [ 0, -4 |  5, 0]
         tau3 = [-2, -3 |  4, 0.3]            [ 0, -3 |  4, 0]
    elected sign of the trimmed sum [3, -7 | 7, 0]: [+, - | +, 0]
    disjoint mean of the agreeing nonzero entries: [3, (-4 - 3)/2 | (5 + 4)/2, 0]
    merged = 1 + 1.0 x [3, -3.5 | 4.5, 0] = [4, -2.5 | 5.5, 1]"""
    base = {"a": torch.ones(2), "b": torch.ones(2)}
    taus = [([3, 1], [-2, 0.1]), ([1, -4], [5, 0.2]), ([-2, -3], [4, 0.3])]
    members = [
        {
            "a": 1 + torch.tensor(a, dtype=torch.float32),
            "b": 1 + torch.tensor(b, dtype=torch.float32),
        }
        for a, b in taus
    ]
    merged = methods.ties(base, members, density=0.5, lam=1.0)
    assert torch.equal(merged["a"], torch.tensor([4.0, -2.5]))
    assert torch.equal(merged["b"], torch.tensor([5.5, 1.0]))


def test_the_greedy_soup_adds_a_member_only_when_held_out_val_does_not_get_worse():
    # val loss = distance to 0; members at 1, -1 (their soup: 0, better) and 5 (worse)
    members = [_state(1.0), _state(-1.0), _state(5.0)]

    def val(state):
        return float(state["w"].abs().sum())

    soup, taken, loss = methods.greedy(members, [val(m) for m in members], val)
    assert taken == [0, 1] and loss == 0.0 and torch.equal(soup["w"], torch.tensor([0.0]))
    assert loss <= min(val(m) for m in members)


def test_fisher_weighted_averaging_weights_each_entry_by_its_fisher():
    members = [_state(1.0, 10.0), _state(3.0, 20.0)]
    fishers = [_state(1.0, 0.0), _state(3.0, 0.0)]  # entry 2: no member's Fisher weighs it
    merged = methods.fisher(members, fishers)
    torch.testing.assert_close(merged["w"][0], torch.tensor((1 * 1 + 3 * 3) / 4))
    torch.testing.assert_close(merged["w"][1], torch.tensor(15.0))  # the uniform mean
    equal = methods.fisher(members, [_state(2.0, 2.0)] * 2)
    torch.testing.assert_close(equal["w"], methods.uniform(members)["w"])


@pytest.mark.parametrize("density", [0.2, 1.0])
def test_ties_keeps_the_top_share_of_each_task_vector(density):
    base, members = _random_states(1, seed=5)
    (tau,) = methods.task_vectors(base, members)
    merged = methods.ties_vectors([tau], density)
    flat = torch.cat([v.flatten() for v in merged.values()])
    total = sum(v.numel() for v in tau.values())
    assert int((flat != 0).sum()) == round(density * total)
