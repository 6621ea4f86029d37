import pytest

from nlpress.ir import NlpressError
from nlpress.models import zoo
from nlpress.models.text import (
    calibration_sentences,
    encode,
    evaluation_pairs,
    load_tokenizer,
    read_sentences,
)


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(str(zoo.get("minilm-l6").tokenizer()))


def test_calibration_and_evaluation_text_are_large_enough_and_disjoint():
    calibration = calibration_sentences()
    pairs = evaluation_pairs()
    assert len(calibration) >= 1000 and len(set(calibration)) == len(calibration)
    assert len(pairs) >= 150
    evaluation = {s for pair in pairs for s in pair}
    assert len(evaluation) == 2 * len(pairs)
    assert not evaluation & set(calibration)


def test_every_text_fits_128_tokens_and_some_are_long(tokenizer):
    texts = calibration_sentences() + [s for pair in evaluation_pairs() for s in pair]
    lengths = [int(n) for n in encode(tokenizer, texts, max_length=512)["attention_mask"].sum(1)]
    assert max(lengths) <= 128
    assert sum(n > 64 for n in lengths) >= 20


def test_encode_pads_to_longest_or_fixed_length_and_truncates(tokenizer):
    feeds = encode(tokenizer, ["a short one", "a somewhat longer sentence than that"])
    assert set(feeds) == {"input_ids", "attention_mask", "token_type_ids"}
    assert feeds["input_ids"].dtype.name == "int64"
    assert feeds["input_ids"].shape[0] == 2
    assert feeds["attention_mask"][0].sum() < feeds["attention_mask"][1].sum()
    assert feeds["attention_mask"][1].all()
    fixed = encode(tokenizer, ["a short one"], max_length=16, padding="max_length")
    assert fixed["input_ids"].shape == (1, 16)
    cut = encode(tokenizer, ["word " * 100], max_length=8)
    assert cut["input_ids"].shape == (1, 8)
    assert cut["input_ids"][0, -1] == tokenizer.token_to_id("[SEP]")


def test_read_sentences_refuses_empty_files(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_text("\n\n")
    with pytest.raises(NlpressError, match="holds no sentences"):
        read_sentences(path)
