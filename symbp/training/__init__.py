"""Training on generated kernels: the optimizer rules (``optim``) and the loop (``loop``)."""
