"""Triton kernels by form. attention.py: the fused attention form for training (forward and backward);
utils.py: helpers shared by the kernels (interpreter detection, tile-size selection).
lion.attention imports the kernels it dispatches to directly."""
