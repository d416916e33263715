"""t-of-n Shamir secret sharing of 32-byte secrets.

Shamir, "How to share a secret", CACM 22(11), 1979; used by secure aggregation to let the
surviving sites rebuild a dropped site's mask key or a survivor's self-mask seed (Bonawitz et
al. 2017, §4, "SS.share" / "SS.recon"; Bell et al. 2020, SecAgg+).

The field and the share format are pycryptodome's ``Crypto.Protocol.SecretSharing.Shamir``
over GF(2^128), a well-kept implementation: an element is a 128-bit integer whose bit ``i`` is
the coefficient of X^i, encoded as 16 big-endian bytes, modulo X^128 + X^7 + X^2 + X + 1
(``_Element`` in pycryptodome). A 32-byte secret is shared as two independent 16-byte halves
with the same x-coordinates. Share ``i`` (0-based list position) is the point at x = i + 1,
encoded as ``y(first half) ‖ y(second half)`` (32 bytes); pycryptodome's ``Shamir.combine``
rebuilds each half from them, and this module's combine rebuilds pycryptodome's shares.

Both directions use this module's own arithmetic in that representation. Why: pycryptodome's
bit-serial field multiplication made ``Shamir.split`` cost about 3 ms per secret at t = 11
(every site shares two secrets with its neighbours each round: the largest cost of a secure
round after masking) and ``Shamir.combine`` 12-16 ms per secret at t = 11 and 150-180 ms at
t = 51 (measured). Splitting evaluates the polynomial by Horner's rule at byte-sized x, so
each step is a multiplication by a byte (a few shifts); its coefficients come from the OS
CSPRNG (``secrets.token_bytes``). :class:`LagrangeAtZero` computes the interpolation
coefficients once per x-set and then combines a secret with table look-ups. The tests check
both bit for bit against pycryptodome's ``Shamir`` and ``_Element``. The arithmetic is not
constant-time (nor is pycryptodome's, on Python integers): a site's own process splits its
secrets, and combining only ever rebuilds secrets the combining party is entitled to learn.

Shamir's scheme cannot detect a wrong reconstruction: with fewer than ``threshold`` shares,
or with a forged share, :func:`combine_shares` returns a wrong secret without any error.
Callers must therefore verify a reconstructed secret against a commitment they already trust
(for a mask secret key: that its X25519 public key equals the signed, advertised one).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping, Sequence

SECRET_BYTES = 32
HALF_BYTES = 16
SHARE_BYTES = 32
MAX_SHARES = 255


class ShamirError(ValueError):
    """Invalid sharing parameters, secret or shares."""


def split_secret(secret: bytes, threshold: int, n_shares: int) -> list[bytes]:
    """Split a 32-byte ``secret`` into ``n_shares`` shares, any ``threshold`` of which rebuild
    it and fewer of which reveal nothing about it (information-theoretically).

    Returns a list whose entry ``i`` is the 32-byte share for x-coordinate ``i + 1``.
    """
    if len(secret) != SECRET_BYTES:
        raise ShamirError(f"the secret must be {SECRET_BYTES} bytes, got {len(secret)}")
    if not 1 <= n_shares <= MAX_SHARES:
        raise ShamirError(f"n_shares must be in 1..{MAX_SHARES}, got {n_shares}")
    if not 1 <= threshold <= n_shares:
        raise ShamirError(f"threshold must be in 1..n_shares={n_shares}, got {threshold}")
    halves = []
    for half in (secret[:HALF_BYTES], secret[HALF_BYTES:]):
        # p(X) = c_(t-1)·X^(t-1) + ... + c_1·X + secret, c_i uniform in GF(2^128)
        coefficients = [int.from_bytes(secrets.token_bytes(HALF_BYTES), "big")
                        for _ in range(threshold - 1)]
        coefficients.append(int.from_bytes(half, "big"))
        halves.append(coefficients)
    return [_horner(halves[0], x).to_bytes(HALF_BYTES, "big")
            + _horner(halves[1], x).to_bytes(HALF_BYTES, "big")
            for x in range(1, n_shares + 1)]


def evaluate(coefficients: Sequence[int], x: int) -> int:
    """The polynomial with ``coefficients`` (highest degree first, as pycryptodome's
    ``make_share`` takes them) at the byte-sized point ``x``, by Horner's rule."""
    _checked_x(x)
    for coefficient in coefficients:
        _check_element(coefficient)
    return _horner(coefficients, x)


def _horner(coefficients: Sequence[int], x: int) -> int:
    y = 0
    for coefficient in coefficients:
        y = _mul_byte(y, x) ^ coefficient
    return y


def combine_shares(shares: Mapping[int, bytes]) -> bytes:
    """Rebuild the 32-byte secret from shares keyed by x-coordinate (1..255).

    Any ``threshold`` or more shares of one sharing give the secret (Lagrange interpolation
    at 0 through all given points; consistent extra points do not change the result). With
    fewer than ``threshold`` shares, or with a corrupted share, the result is a wrong secret
    and *no error is raised*: see the module docstring.
    """
    return combine_many([shares])[0]


def combine_many(shares_by_secret: Sequence[Mapping[int, bytes]]) -> list[bytes]:
    """Rebuild several 32-byte secrets; entry ``i`` of the result is
    ``combine_shares(shares_by_secret[i])``.

    Secrets whose shares sit at the same x-coordinates share one :class:`LagrangeAtZero`, so
    the coefficients are computed once per distinct x-set rather than once per secret.
    """
    by_xs: dict[tuple[int, ...], LagrangeAtZero] = {}
    out = []
    for shares in shares_by_secret:
        if not shares:
            raise ShamirError("need at least one share to combine")
        xs = tuple(sorted(shares, key=_checked_x))
        for x in xs:  # before the coefficients, which cost more than the check
            _check_share(x, shares[x])
        lagrange = by_xs.get(xs)
        if lagrange is None:
            lagrange = by_xs[xs] = LagrangeAtZero(xs)
        out.append(lagrange.combine(shares))
    return out


class LagrangeAtZero:
    """The Lagrange basis at x = 0 for one set of x-coordinates ``xs``, ready to combine any
    number of sharings whose shares sit exactly at those points.

    ``secret = Σ_j y_j · ℓ_j``, with ``ℓ_j = Π_{m≠j} x_m / (x_j − x_m)`` in GF(2^128), where
    subtraction is XOR. For each ``ℓ_j`` the carry-less products ``ℓ_j · b`` of all 256 byte
    values ``b`` are tabulated, so multiplying a 16-byte half by ``ℓ_j`` is 16 look-ups,
    shifts and XORs; the t products are summed unreduced and reduced once per half. Building
    the basis costs about as much as combining 10-20 secrets (measured); combining one then
    costs ``2·t`` such 16-step multiplications, where pycryptodome's ``Shamir.combine`` does
    about ``2·t²`` bit-serial multiplications and ``t`` inversions per half.
    """

    __slots__ = ("_tables", "_x_set", "xs")

    def __init__(self, xs: Iterable[int]) -> None:
        points = tuple(xs)
        if not points:
            raise ShamirError("need at least one x-coordinate")
        seen: set[int] = set()
        for x in points:
            _checked_x(x)
            if x in seen:
                raise ShamirError(f"duplicate x-coordinate {x}")
            seen.add(x)
        self.xs: tuple[int, ...] = points
        self._x_set = frozenset(points)
        # ℓ_j = N / d_j with N = Π_m x_m and d_j = x_j · Π_{m≠j} (x_j ⊕ x_m): every factor
        # is a byte, so the products cost a few shifts each, and each ℓ_j one inversion.
        product_of_xs = 1
        for x in points:
            product_of_xs = _mul_byte(product_of_xs, x)
        tables = []
        for x_j in points:
            d_j = x_j
            for x_m in points:
                if x_m != x_j:
                    d_j = _mul_byte(d_j, x_j ^ x_m)
            tables.append(_byte_multiples(gf128_mul(product_of_xs, gf128_inverse(d_j))))
        self._tables: tuple[list[int], ...] = tuple(tables)

    def combine(self, shares: Mapping[int, bytes]) -> bytes:
        """The 32-byte secret from shares at exactly this basis' x-coordinates."""
        if shares.keys() != self._x_set:
            raise ShamirError(f"shares are at x={sorted(shares, key=_checked_x)}, the "
                              f"coefficients are for x={sorted(self.xs)}")
        low = high = 0
        for x, table in zip(self.xs, self._tables, strict=True):
            share = _check_share(x, shares[x])
            # Horner over the big-endian bytes b_0..b_15 of a half (pycryptodome's encoding):
            # ℓ·y = Σ_i ℓ·b_i·X^(8·(15-i)), unreduced
            product = 0
            for byte in share[:HALF_BYTES]:
                product = (product << 8) ^ table[byte]
            low ^= product
            product = 0
            for byte in share[HALF_BYTES:]:
                product = (product << 8) ^ table[byte]
            high ^= product
        return _reduce(low).to_bytes(HALF_BYTES, "big") + _reduce(high).to_bytes(HALF_BYTES, "big")


def gf128_mul(a: int, b: int) -> int:
    """``a · b`` in pycryptodome's GF(2^128): bit ``i`` of an element is the coefficient of
    X^i, modulo X^128 + X^7 + X^2 + X + 1."""
    _check_element(a)
    _check_element(b)
    return _reduce(_clmul(a, b))


def gf128_inverse(a: int) -> int:
    """``a^-1`` in pycryptodome's GF(2^128), by the binary extended Euclidean algorithm
    (Hankerson, Menezes, Vanstone, "Guide to Elliptic Curve Cryptography", Alg. 2.48)."""
    _check_element(a)
    if a == 0:
        raise ShamirError("0 has no inverse in GF(2^128)")
    # invariants: g1·a ≡ u and g2·a ≡ v (mod the field polynomial)
    u, v, g1, g2 = a, _FIELD_POLYNOMIAL, 1, 0
    while u != 1:
        shift = u.bit_length() - v.bit_length()
        if shift < 0:
            u, v, g1, g2 = v, u, g2, g1
            shift = -shift
        u ^= v << shift
        g1 ^= g2 << shift
    return _reduce(g1)


#: X^128 + X^7 + X^2 + X + 1, pycryptodome's ``_Element.irr_poly``
_FIELD_POLYNOMIAL = (1 << 128) | 0x87
_ELEMENT_MASK = (1 << 128) - 1


def _checked_x(x: int) -> int:
    if isinstance(x, bool) or not isinstance(x, int) or not 1 <= x <= MAX_SHARES:
        raise ShamirError(f"share x-coordinates must be integers in 1..{MAX_SHARES}, got {x!r}")
    return x


def _check_share(x: int, share: bytes) -> bytes:
    if len(share) != SHARE_BYTES:
        raise ShamirError(f"share at x={x} must be {SHARE_BYTES} bytes, got {len(share)}")
    return share


def _check_element(a: int) -> None:
    if not 0 <= a <= _ELEMENT_MASK:
        raise ShamirError(f"a GF(2^128) element is an integer in 0..2^128-1, got {a}")


def _clmul(a: int, b: int) -> int:
    """Carry-less product of two polynomials over GF(2), unreduced (4-bit window over b)."""
    table = [0] * 16
    for j in range(1, 16):
        table[j] = (table[j >> 1] << 1) ^ (a if j & 1 else 0)
    product = 0
    for shift in range((b.bit_length() + 3) // 4 * 4 - 4, -1, -4):
        product = (product << 4) ^ table[(b >> shift) & 15]
    return product


def _byte_multiples(a: int) -> list[int]:
    """``[a·b for b in 0..255]``, carry-less and unreduced (at most 135 bits each)."""
    table = [0]
    for bit in range(8):  # the entries for b in [2^bit, 2^(bit+1)) are a·2^bit ⊕ earlier ones
        high = a << bit
        table += [high ^ low for low in table]
    return table


def _mul_byte(a: int, x: int) -> int:
    """``a · x`` in the field for an element ``a`` and a byte ``x``: at most 8 shifts."""
    product = 0
    while x:
        if x & 1:
            product ^= a
        a <<= 1
        x >>= 1
    return _reduce(product)


def _reduce(z: int) -> int:
    """``z`` (degree < 256) modulo the field polynomial: X^128 ≡ X^7 + X^2 + X + 1."""
    while z >> 128:
        high = z >> 128
        z = (z & _ELEMENT_MASK) ^ high ^ (high << 1) ^ (high << 2) ^ (high << 7)
    return z
