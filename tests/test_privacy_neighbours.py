"""The SecAgg+ neighbour graph (Bell et al. 2020): k-regular, symmetric, recomputable."""

from __future__ import annotations

import math
import random

import pytest

from fedtune.privacy import neighbours as nb

SITES = [f"site-{i:02d}" for i in range(20)]
SEED = bytes(range(32))


def _edges(graph: dict[str, tuple[str, ...]]) -> set[frozenset[str]]:
    return {frozenset((u, v)) for u, peers in graph.items() for v in peers}


def test_every_site_has_exactly_degree_neighbours() -> None:
    graph = nb.neighbour_graph(SITES, 6, SEED)
    assert sorted(graph) == SITES
    assert all(len(peers) == 6 for peers in graph.values())


def test_graph_is_symmetric() -> None:
    graph = nb.neighbour_graph(SITES, 6, SEED)
    for site, peers in graph.items():
        for peer in peers:
            assert site in graph[peer], (site, peer)


def test_no_site_is_its_own_neighbour() -> None:
    graph = nb.neighbour_graph(SITES, 8, SEED)
    assert all(site not in peers for site, peers in graph.items())


def test_neighbours_are_sorted_and_distinct() -> None:
    graph = nb.neighbour_graph(SITES, 8, SEED)
    assert all(list(peers) == sorted(set(peers)) for peers in graph.values())


def test_graph_is_connected() -> None:
    graph = nb.neighbour_graph(SITES, 4, SEED)
    seen, todo = {SITES[0]}, [SITES[0]]
    while todo:
        for peer in graph[todo.pop()]:
            if peer not in seen:
                seen.add(peer)
                todo.append(peer)
    assert seen == set(SITES)


def test_same_seed_gives_the_same_graph() -> None:
    assert nb.neighbour_graph(SITES, 6, SEED) == nb.neighbour_graph(list(SITES), 6, bytes(SEED))


def test_order_of_the_site_ids_does_not_matter() -> None:
    shuffled = list(SITES)
    random.Random(0).shuffle(shuffled)
    assert nb.neighbour_graph(shuffled, 6, SEED) == nb.neighbour_graph(SITES, 6, SEED)


def test_different_seeds_give_different_graphs() -> None:
    graphs = [_edges(nb.neighbour_graph(SITES, 6, bytes([i]) * 32)) for i in range(5)]
    assert len({frozenset(g) for g in graphs}) == 5


def test_graph_for_a_fixed_seed_is_pinned() -> None:
    # Every party recomputes this graph; a change here would split a mixed-version federation.
    graph = nb.neighbour_graph([f"s{i}" for i in range(8)], 4, b"seed")
    assert graph == {
        "s0": ("s1", "s2", "s5", "s7"),
        "s1": ("s0", "s3", "s5", "s7"),
        "s2": ("s0", "s4", "s6", "s7"),
        "s3": ("s1", "s4", "s5", "s6"),
        "s4": ("s2", "s3", "s5", "s6"),
        "s5": ("s0", "s1", "s3", "s4"),
        "s6": ("s2", "s3", "s4", "s7"),
        "s7": ("s0", "s1", "s2", "s6"),
    }


@pytest.mark.parametrize("degree", [19, 20, 100])
def test_degree_at_least_n_minus_one_gives_the_complete_graph(degree: int) -> None:
    graph = nb.neighbour_graph(SITES, degree, SEED)
    assert all(graph[s] == tuple(o for o in SITES if o != s) for s in SITES)


def test_odd_degree_is_rounded_up_to_even() -> None:
    graph = nb.neighbour_graph(SITES, 5, SEED)
    assert all(len(peers) == 6 for peers in graph.values())


def test_odd_degree_that_rounds_up_to_n_minus_one_is_complete() -> None:
    graph = nb.neighbour_graph(SITES[:7], 5, SEED)
    assert all(len(peers) == 6 for peers in graph.values())


def test_single_site_has_no_neighbours() -> None:
    assert nb.neighbour_graph(["only"], 2, SEED) == {"only": ()}


def test_duplicate_site_ids_are_rejected() -> None:
    with pytest.raises(nb.GraphError, match="duplicate site ids: b"):
        nb.neighbour_graph(["a", "b", "c", "b"], 2, SEED)


@pytest.mark.parametrize("degree", [0, -2])
def test_degree_below_one_is_rejected(degree: int) -> None:
    with pytest.raises(nb.GraphError, match="degree must be an integer >= 1"):
        nb.neighbour_graph(SITES, degree, SEED)


def test_empty_site_list_is_rejected() -> None:
    with pytest.raises(nb.GraphError, match="at least one site"):
        nb.neighbour_graph([], 2, SEED)


def test_empty_site_id_is_rejected() -> None:
    with pytest.raises(nb.GraphError, match="non-empty strings"):
        nb.neighbour_graph(["a", ""], 2, SEED)


def test_seed_must_be_bytes() -> None:
    with pytest.raises(nb.GraphError, match="seed must be bytes"):
        nb.neighbour_graph(SITES, 2, "seed")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("n", "threshold", "expected"),
    [
        (20, 11, 12),  # threshold dominates, rounded up to even
        (50, 3, 12),  # ceil(2·log2 50) = 12
        (100, 2, 14),  # ceil(2·log2 100) = 14
        (1000, 2, 20),  # ceil(2·log2 1000) = 20
        (30, 15, 16),
        (5, 3, 4),  # capped at n - 1
        (3, 2, 2),
        (1, 1, 0),
    ],
)
def test_default_degree(n: int, threshold: int, expected: int) -> None:
    assert nb.default_degree(n, threshold) == expected


def test_default_degree_log_term_is_ceil_of_2_log2_n() -> None:
    for n in range(2, 600):
        log_term = math.ceil(2 * math.log2(n))
        expected = min(log_term + log_term % 2, n - 1)
        assert nb.default_degree(n, 1) == max(expected, 1 if n > 1 else 0), n


def test_default_degree_is_never_below_the_threshold_unless_capped() -> None:
    for n in range(2, 60):
        for t in range(1, n + 1):
            degree = nb.default_degree(n, t)
            assert degree >= min(t, n - 1)
            assert degree <= n - 1


@pytest.mark.parametrize(("n", "threshold"), [(0, 1), (5, 0), (5, 6)])
def test_default_degree_rejects_invalid_arguments(n: int, threshold: int) -> None:
    with pytest.raises(nb.GraphError):
        nb.default_degree(n, threshold)
