"""Pass stats as manifests write them: nested per item, counts as ints."""

from nlpress.passes.stats import readable_stats, split_key


def test_each_spelling_of_a_per_item_stat_is_nested_under_its_item():
    stats = {
        "layer./encoder/layer.0/query/MatMul.sensitivity": 0.002,
        "layer./encoder/layer.0/query/MatMul.float_budget": 1.0,
        "activation./encoder/layer.0/ln_output_0.range": 1.5,
        "table.embeddings.word.weight.quantized": 1.0,
        "sparsity:/encoder/layer.1/ffn": 0.25,
        "before.com.microsoft.Attention": 6.0,
        "after.MatMul": 36.0,
        "nodes_before": 673.0,
    }
    assert readable_stats(stats) == {
        "layers": {
            "/encoder/layer.0/query/MatMul": {"sensitivity": 0.002, "float_budget": 1},
            "/encoder/layer.1/ffn": {"sparsity": 0.25},
        },
        "activations": {"/encoder/layer.0/ln_output_0": {"range": 1.5}},
        "tables": {"embeddings.word.weight": {"quantized": 1}},
        "ops": {"before": {"com.microsoft.Attention": 6}, "after": {"MatMul": 36}},
        "nodes_before": 673,
    }


def test_whole_counts_become_ints_and_measures_stay_floats():
    stats = {
        "nodes_before": 673.0,
        "params_after": 9.1e6,
        "budget_cosine": 1.0,
        "param_ratio": 1.0,
        "layer.a.output_error": 0.0,
        "layer.a.r": 12.0,
        "budget_met": 0.0,
        "recovery_error_after": 2.0,
        "seconds": 3.0,
        "fraction": 0.5,
        "nan": float("nan"),
    }
    out = readable_stats(stats)
    assert type(out["nodes_before"]) is int and out["nodes_before"] == 673
    assert type(out["params_after"]) is int and out["params_after"] == 9_100_000
    assert type(out["budget_met"]) is int
    for measure in ("budget_cosine", "param_ratio", "recovery_error_after", "seconds"):
        assert type(out[measure]) is float, measure
    assert type(out["layers"]["a"]["output_error"]) is float
    assert type(out["layers"]["a"]["r"]) is int
    assert out["fraction"] == 0.5 and out["nan"] != out["nan"]


def test_keys_that_only_look_nested_stay_flat():
    assert split_key("layer.only") == (None, "", "layer.only")
    assert split_key("layers_quantized") == (None, "", "layers_quantized")
    assert split_key("before") == (None, "", "before")
    assert split_key(":x") == (None, "", ":x")
