"""The pass registry and the named pipelines; both are fixed at import and never mutated."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from nlpress.passes.base import Pass
from nlpress.passes.cleanup import Cleanup
from nlpress.passes.factorize_matmul import FactorizeMatmul
from nlpress.passes.fold import Fold
from nlpress.passes.identity_elim import IdentityElim
from nlpress.passes.pipeline import Pipeline, parse_pipeline
from nlpress.passes.pool import Pool
from nlpress.passes.prune_sparsify import PruneSparsify
from nlpress.passes.quantize_insert import QuantizeInsert
from nlpress.passes.quantize_weights import QuantizeWeights

PASSES: Mapping[str, type[Pass]] = MappingProxyType(
    {
        cls.name: cls
        for cls in (
            Cleanup,
            FactorizeMatmul,
            Fold,
            IdentityElim,
            Pool,
            PruneSparsify,
            QuantizeInsert,
            QuantizeWeights,
        )
    }
)

# Named pipelines are registered texts, not code paths: `-p O1` means exactly this text.
NAMED_PIPELINES: Mapping[str, str] = MappingProxyType(
    {
        "O0": "cleanup",
        "O1": "fold,identity-elim,cleanup",
        "int8": "fold,quantize-insert{smooth=0.8 budget-cosine=0.997},cleanup",
    }
)


def parse(text: str) -> Pipeline:
    """Parse pipeline text or a named pipeline against the registered passes."""
    return parse_pipeline(text, PASSES, NAMED_PIPELINES)
