"""nlpress.models: the model zoo, tokenized feeds, evaluation text and fidelity metrics."""
