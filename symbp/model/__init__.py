"""Stage 1 of the pipeline: the model. Validated networks (the Graph IR, its MLP chain form),
the function table, the optimizer rules, the safe expression parser and the spec readers."""
