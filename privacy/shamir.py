"""t-of-n Shamir secret sharing of 32-byte secrets.

Shamir, "How to share a secret", CACM 22(11), 1979; used by secure aggregation to let the
surviving sites rebuild a dropped site's mask key or a survivor's self-mask seed (Bonawitz et
al. 2017, §4, "SS.share" / "SS.recon"; Bell et al. 2020, SecAgg+).

The field arithmetic is pycryptodome's ``Crypto.Protocol.SecretSharing.Shamir`` over
GF(2^128), a well-kept implementation; a 32-byte secret is shared as two independent 16-byte
halves with the same x-coordinates. Share ``i`` (0-based list position) is the point at
x = i + 1, encoded as ``y(first half) ‖ y(second half)`` (32 bytes). The polynomial
coefficients come from the OS CSPRNG (pycryptodome's ``get_random_bytes``).

Shamir's scheme cannot detect a wrong reconstruction: with fewer than ``threshold`` shares,
or with a forged share, :func:`combine_shares` returns a wrong secret without any error.
Callers must therefore verify a reconstructed secret against a commitment they already trust
(for a mask secret key: that its X25519 public key equals the signed, advertised one).
"""

from __future__ import annotations

from Crypto.Protocol.SecretSharing import Shamir

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
    low = Shamir.split(threshold, n_shares, secret[:HALF_BYTES], ssss=False)
    high = Shamir.split(threshold, n_shares, secret[HALF_BYTES:], ssss=False)
    shares = []
    for x, ((x_low, y_low), (x_high, y_high)) in enumerate(zip(low, high, strict=True), 1):
        if x_low != x or x_high != x:  # pycryptodome numbers shares 1..n; guard the contract
            raise ShamirError(f"unexpected share numbering from pycryptodome at x={x}")
        shares.append(y_low + y_high)
    return shares


def combine_shares(shares: dict[int, bytes]) -> bytes:
    """Rebuild the 32-byte secret from shares keyed by x-coordinate (1..255).

    Any ``threshold`` or more shares of one sharing give the secret (Lagrange interpolation
    at 0 through all given points; consistent extra points do not change the result). With
    fewer than ``threshold`` shares, or with a corrupted share, the result is a wrong secret
    and *no error is raised*: see the module docstring.
    """
    if not shares:
        raise ShamirError("need at least one share to combine")
    low: list[tuple[int, bytes]] = []
    high: list[tuple[int, bytes]] = []
    for x, share in sorted(shares.items()):
        if isinstance(x, bool) or not isinstance(x, int) or not 1 <= x <= MAX_SHARES:
            raise ShamirError(f"share x-coordinates must be integers in 1..{MAX_SHARES}, got {x!r}")
        if len(share) != SHARE_BYTES:
            raise ShamirError(f"share at x={x} must be {SHARE_BYTES} bytes, got {len(share)}")
        low.append((x, share[:HALF_BYTES]))
        high.append((x, share[HALF_BYTES:]))
    return Shamir.combine(low, ssss=False) + Shamir.combine(high, ssss=False)
