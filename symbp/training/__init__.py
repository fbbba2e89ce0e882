"""Training on generated kernels: the loop (``loop``). The optimizer rules it fuses into the
kernel are definitions, read by the code generator too, so they live in ``symbp.model.optim``."""
