"""What the Triton ops share: ``features`` (φ in Triton and its codes), ``rows`` (the attention form's row loads),
``args`` (argument preparation: checks, strides, buffers, the scan kernels' gates), ``launching`` (the interpreter
switch, autotuned tiles, the launch path) and ``op`` (the custom-op / autograd scaffold of the ops with a
backward)."""
