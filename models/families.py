"""The encoder families people ship, as small random-weight Hugging Face folders.

Each family is one of transformers' own model classes with a small config (hidden 64, two
layers, MiniLM's 30522-token vocabulary so MiniLM's tokenizer.json serves them all), seeded and
saved with `save_pretrained`, as a user's folder would be. They exercise what exporters write
for each architecture: relative position biases (T5, DeBERTa-v2, MPNet), a factorized embedding
and one layer shared by all layers (ALBERT), Conv1D layers and a causal mask (GPT-2), gated FFNs
and rotary positions (ModernBERT). Random weights say nothing about accuracy on text; they say
whether every step runs, is exact where it should be, and reports what it did.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nlpress.models import export

VOCABULARY = 30522
SMALL = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
FFN = {"intermediate_size": 128}
# ModernBERT's special tokens default to its own 50k vocabulary: MiniLM's ids instead.
SPECIAL = {"pad_token_id": 0, "bos_token_id": 101, "eos_token_id": 102}


@dataclass(frozen=True)
class Family:
    """A family: transformers' config and model class names and the small config's options."""

    name: str
    config: str
    model: str
    options: dict[str, Any] = field(default_factory=dict)


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("bert", "BertConfig", "BertModel", {**SMALL, **FFN}),
        Family("roberta", "RobertaConfig", "RobertaModel", {**SMALL, **FFN}),
        Family("xlm-roberta", "XLMRobertaConfig", "XLMRobertaModel", {**SMALL, **FFN}),
        Family(
            "distilbert",
            "DistilBertConfig",
            "DistilBertModel",
            {"dim": 64, "n_layers": 2, "n_heads": 4, "hidden_dim": 128},
        ),
        Family("albert", "AlbertConfig", "AlbertModel", {"embedding_size": 32, **SMALL, **FFN}),
        Family("electra", "ElectraConfig", "ElectraModel", {"embedding_size": 32, **SMALL, **FFN}),
        Family("mpnet", "MPNetConfig", "MPNetModel", {**SMALL, **FFN}),
        Family("deberta-v2", "DebertaV2Config", "DebertaV2Model", {**SMALL, **FFN}),
        Family(
            "modernbert",
            "ModernBertConfig",
            "ModernBertModel",
            {**SMALL, **FFN, **SPECIAL, "cls_token_id": 101, "sep_token_id": 102},
        ),
        Family(
            "t5-encoder",
            "T5Config",
            "T5EncoderModel",
            {"d_model": 64, "d_kv": 16, "d_ff": 128, "num_layers": 2, "num_heads": 4},
        ),
        Family("gpt2", "GPT2Config", "GPT2Model", {"n_embd": 64, "n_layer": 2, "n_head": 4}),
    )
}


def write_folder(name: str, root: str | os.PathLike[str], seed: int = 0) -> Path:
    """Save family `name` with seeded random weights as a Hugging Face folder under `root`."""
    import torch
    import transformers

    family = FAMILIES[name]
    config = getattr(transformers, family.config)(vocab_size=VOCABULARY, **family.options)
    torch.manual_seed(seed)
    model = getattr(transformers, family.model)(config)
    folder = Path(root) / name
    model.save_pretrained(folder)
    shutil.copyfile(export.minilm_weights_dir() / "tokenizer.json", folder / "tokenizer.json")
    return folder


PRUNE_NEURONS = "fold,prune-sparsify{pattern=neurons sparsity=0.25},cleanup"
PRUNE_HEADS = "fold,prune-sparsify{pattern=heads sparsity=0.25},cleanup"
