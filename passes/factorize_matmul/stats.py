"""Per-layer and total numbers of one factorize-matmul run."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from nlpress.passes.factorize_matmul.fitting import Decomposition, Fit, relative_error


@dataclass
class Stats:
    """Per-layer and total numbers of one run."""

    layers: dict[str, dict[str, float]] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    sensitivity: dict[str, float] = field(default_factory=dict)
    factorized: int = 0

    def skip(self, label: str, reason: str, rank: int | None = None) -> None:
        """Record a layer left as it was, and why."""
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        entry: dict[str, float] = {f"skipped_{reason}": 1.0}
        if rank is not None:
            entry["r"] = float(rank)
        self.layers[label] = entry

    def add(
        self,
        label: str,
        k: int,
        n: int,
        fit: Fit,
        decomposition: Decomposition,
        seconds: float,
    ) -> None:
        """Record a factorized layer."""
        self.factorized += 1
        approx = fit.first @ fit.second
        entry = {
            "k": float(k),
            "n": float(n),
            "r": float(fit.rank),
            "params_before": float(k * n),
            "params_after": float(fit.rank * (k + n)),
            "flops_before": float(2 * k * n),
            "flops_after": float(2 * fit.rank * (k + n)),
            "weight_error": _relative(approx - decomposition.weight, decomposition.weight),
            "seconds": seconds,
        }
        d = decomposition
        if d.grams is not None:
            entry["output_error"] = relative_error(d.grams, fit, d.weight, d.bias)
        self.layers[label] = entry

    def as_dict(self) -> dict[str, float]:
        """Totals, then `layer.<node name>.<stat>` for every layer considered."""
        done = [e for e in self.layers.values() if "params_after" in e]
        totals: dict[str, float] = {
            "factorized": float(self.factorized),
            **{f"skipped_{r}": float(c) for r, c in sorted(self.skipped.items())},
        }
        for key in ("params_before", "params_after", "flops_before", "flops_after", "seconds"):
            totals[key] = float(sum(e[key] for e in done))
        if done:
            totals["param_ratio"] = totals["params_after"] / totals["params_before"]
        errors = [e["output_error"] for e in done if "output_error" in e]
        if errors:
            totals["output_error_mean"] = float(np.mean(errors))
            totals["output_error_max"] = float(np.max(errors))
        for label, entry in self.layers.items():
            totals.update({f"layer.{label}.{k}": v for k, v in entry.items()})
        totals.update({f"layer.{label}.sensitivity": w for label, w in self.sensitivity.items()})
        return totals


def _relative(difference: np.ndarray, reference: np.ndarray) -> float:
    return float(np.linalg.norm(difference) / max(float(np.linalg.norm(reference)), 1e-300))
