"""Symbolic integers for shape arithmetic: polynomials in named dims with integer coefficients.

A dim is an `int` or a `Poly` such as `batch*sequence` or `2*sequence + 1`. Polynomials are kept
canonical (sorted monomials, no zero terms), so two dims are equal exactly when they are equal as
polynomials, and a `Poly` that reduces to a constant is returned as a plain `int`. Only exact
operations are defined; anything else (a symbolic floor division, say) returns None, meaning
"unknown", and callers must treat None as unequal to everything.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

Monomial = tuple[str, ...]  # sorted symbol names, repeated for powers; () is the constant term


@dataclass(frozen=True)
class Poly:
    """A polynomial with integer coefficients in named symbols (never a bare constant)."""

    terms: tuple[tuple[Monomial, int], ...]

    def __str__(self) -> str:
        """Readable text, e.g. `batch*sequence + 1`."""
        parts = []
        for mono, coef in self.terms:
            body = "*".join(mono)
            if not body:
                parts.append(str(coef))
            elif coef == 1:
                parts.append(body)
            else:
                parts.append(f"{coef}*{body}")
        return " + ".join(parts)


Dim = int | Poly


def symbol(name: str) -> Poly:
    """The dim named `name`."""
    return Poly((((name,), 1),))


def _make(terms: Mapping[Monomial, int]) -> Dim:
    kept = tuple(sorted((m, c) for m, c in terms.items() if c))
    if not kept:
        return 0
    if len(kept) == 1 and kept[0][0] == ():
        return kept[0][1]
    return Poly(kept)


def _terms(dim: Dim) -> dict[Monomial, int]:
    return dict(dim.terms) if isinstance(dim, Poly) else {(): int(dim)}


def add(a: Dim, b: Dim) -> Dim:
    """A + b."""
    if isinstance(a, int) and isinstance(b, int):
        return a + b
    terms = _terms(a)
    for mono, coef in _terms(b).items():
        terms[mono] = terms.get(mono, 0) + coef
    return _make(terms)


def neg(a: Dim) -> Dim:
    """-a."""
    return -a if isinstance(a, int) else _make({m: -c for m, c in a.terms})


def sub(a: Dim, b: Dim) -> Dim:
    """A - b."""
    return add(a, neg(b))


def mul(a: Dim, b: Dim) -> Dim:
    """A * b."""
    if isinstance(a, int) and isinstance(b, int):
        return a * b
    terms: dict[Monomial, int] = {}
    for ma, ca in _terms(a).items():
        for mb, cb in _terms(b).items():
            mono = tuple(sorted(ma + mb))
            terms[mono] = terms.get(mono, 0) + ca * cb
    return _make(terms)


def product(dims: Iterable[Dim]) -> Dim:
    """The product of `dims` (1 when empty)."""
    result: Dim = 1
    for dim in dims:
        result = mul(result, dim)
    return result


def div_exact(a: Dim, b: Dim) -> Dim | None:
    """A / b when b divides a exactly as a polynomial (b an int or a single monomial), else None."""
    if isinstance(b, int):
        if b == 0:
            return None
        if isinstance(a, int):
            return a // b if a % b == 0 else None
        if any(c % b for _, c in a.terms):
            return None
        return _make({m: c // b for m, c in a.terms})
    if len(b.terms) != 1:
        return a if a == b else None
    (bmono, bcoef) = b.terms[0]
    terms: dict[Monomial, int] = {}
    for mono, coef in _terms(a).items():
        rest = _remove(mono, bmono)
        if rest is None or coef % bcoef:
            return None
        terms[rest] = terms.get(rest, 0) + coef // bcoef
    return _make(terms)


def _remove(mono: Monomial, factor: Monomial) -> Monomial | None:
    left = list(mono)
    for name in factor:
        if name not in left:
            return None
        left.remove(name)
    return tuple(left)


def is_known(dims: Iterable[Dim | None]) -> bool:
    """Whether every dim is a plain int."""
    return all(isinstance(d, int) for d in dims)


def minimum(a: Dim, b: int) -> Dim:
    """min(a, b) for a dim and a size: a plain int when known, else the symbol `min(a,b)`."""
    if isinstance(a, int):
        return min(a, b)
    return symbol(f"min({a},{b})")


def absorbs(a: Dim, b: Dim) -> bool:
    """Whether broadcasting a with b gives a on every valid run: b is `min(a,K)` with K > 1.

    If a <= K, b equals a; if a > K, b is K, which broadcasts with a only when K is 1.
    """
    if not isinstance(b, Poly) or len(b.terms) != 1 or b.terms[0][1] != 1:
        return False
    (name,) = b.terms[0][0] if len(b.terms[0][0]) == 1 else ("",)
    prefix = f"min({a},"
    if not name.startswith(prefix) or not name.endswith(")"):
        return False
    bound = name[len(prefix) : -1]
    return bound.isdigit() and int(bound) > 1


def nonnegative(a: Dim) -> bool:
    """Whether a is certainly >= 0 (dims are; so are their sums and products)."""
    return a >= 0 if isinstance(a, int) else all(c >= 0 for _, c in a.terms)
