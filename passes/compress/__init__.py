"""What the lossy passes share: Grams, sensitivity, budget allocation and distillation.

`grams` holds the one Gram type and its accumulator, `sensitivity` the loss of one unit
compressed alone, `allocate` the split of a budget over measured cost curves, and `distillation`
the end-to-end training stage with its options.
"""
