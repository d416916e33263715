"""The SecAgg+ neighbour graph: a k-regular graph every party recomputes from a public seed.

Bell, Bonawitz, Gascón, Lepoint and Raykova, "Secure Single-Server Aggregation with
(Poly)Logarithmic Overhead", CCS 2020 (SecAgg+): instead of masking with and sharing keys to
all n - 1 other sites, each site does so only with its k = O(log n) neighbours in a random
regular graph, which keeps privacy and dropout robustness with high probability while cutting
per-site work from O(n) to O(log n). fedtune uses the Harary-style construction of that
paper's implementations: randomly permute the sites, place them on a ring, and connect each
to the k/2 nearest on either side (a circulant graph).

Determinism: the permutation is a Fisher–Yates shuffle (Knuth, TAOCP vol. 2, Algorithm
3.4.2P) of the *sorted* site ids, driven by the byte stream SHA-256(domain ‖ seed ‖ counter)
with rejection sampling for unbiased integers. No numpy or ``random`` state is involved, so
the graph depends only on (site ids, degree, seed) and every site computes the same one.
The seed must be public and not chosen by any single party after the site set is known
(otherwise that party could choose a graph that isolates a target).
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Sequence

GRAPH_DOMAIN = b"fedtune/v1/neighbour-graph"


class GraphError(ValueError):
    """Invalid neighbour-graph parameters (degree, site ids, threshold)."""


def default_degree(n: int, threshold: int) -> int:
    """The neighbour count for ``n`` sites: ``max(threshold, ceil(2·log2 n))`` rounded up to
    an even number (the graph's degree), capped at ``n - 1`` (the complete graph).

    ``ceil(2·log2 n)`` is computed exactly in integers: the smallest m with 2^m >= n^2.
    """
    if isinstance(n, bool) or n < 1:
        raise GraphError(f"the number of sites must be >= 1, got {n!r}")
    if isinstance(threshold, bool) or not 1 <= threshold <= n:
        raise GraphError(f"threshold must be in 1..n={n}, got {threshold!r}")
    log_degree = (n * n - 1).bit_length()  # == ceil(2·log2 n)
    degree = max(threshold, log_degree)
    degree += degree % 2
    return min(degree, n - 1)


def neighbour_graph(site_ids: Sequence[str], degree: int, seed: bytes) -> dict[str, tuple[str, ...]]:
    """Each site's neighbours (sorted), in a graph determined by (sorted ids, degree, seed).

    An odd ``degree`` is rounded up to even; with ``degree >= n - 1`` (after rounding) the
    graph is complete. Otherwise every site has exactly ``degree`` neighbours. The graph is
    symmetric and has no self-loops. The result is the same whatever the order of
    ``site_ids``.
    """
    if isinstance(seed, str) or not isinstance(seed, bytes | bytearray):
        raise GraphError(f"seed must be bytes, got {type(seed).__name__}")
    if isinstance(degree, bool) or not isinstance(degree, int) or degree < 1:
        raise GraphError(f"degree must be an integer >= 1, got {degree!r}")
    ids = sorted(site_ids)
    if not ids:
        raise GraphError("need at least one site id")
    for site in ids:
        if not isinstance(site, str) or not site:
            raise GraphError(f"site ids must be non-empty strings, got {site!r}")
    duplicates = sorted({a for a, b in itertools.pairwise(ids) if a == b})
    if duplicates:
        raise GraphError(f"duplicate site ids: {', '.join(duplicates)}")
    n = len(ids)
    degree += degree % 2
    if degree >= n - 1:
        return {site: tuple(other for other in ids if other != site) for site in ids}

    ring = _shuffled(ids, _ByteStream(seed))
    half = degree // 2
    graph: dict[str, tuple[str, ...]] = {}
    for position, site in enumerate(ring):
        near = [ring[(position + step) % n] for step in range(1, half + 1)]
        near += [ring[(position - step) % n] for step in range(1, half + 1)]
        graph[site] = tuple(sorted(near))
    return {site: graph[site] for site in ids}


class _ByteStream:
    """SHA-256 in counter mode over (domain, seed): a deterministic, portable byte source."""

    def __init__(self, seed: bytes) -> None:
        self._prefix = (
            len(GRAPH_DOMAIN).to_bytes(2, "big") + GRAPH_DOMAIN
            + len(seed).to_bytes(4, "big") + bytes(seed)
        )
        self._counter = 0
        self._buffer = b""

    def read(self, n: int) -> bytes:
        while len(self._buffer) < n:
            block = hashlib.sha256(self._prefix + self._counter.to_bytes(8, "big")).digest()
            self._buffer += block
            self._counter += 1
        out, self._buffer = self._buffer[:n], self._buffer[n:]
        return out

    def below(self, bound: int) -> int:
        """A uniform integer in [0, bound): 64-bit draws, rejecting the biased tail."""
        space = 1 << 64
        limit = space - space % bound
        while True:
            draw = int.from_bytes(self.read(8), "big")
            if draw < limit:
                return draw % bound


def _shuffled(items: list[str], stream: _ByteStream) -> list[str]:
    out = list(items)
    for i in range(len(out) - 1, 0, -1):
        j = stream.below(i + 1)
        out[i], out[j] = out[j], out[i]
    return out
