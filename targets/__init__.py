"""nlpress.targets: target descriptors, lowering through TVM, artifacts and their runtime."""
