"""Triton kernels, laid out as the torch forms of ``lion.ops``: ``naive`` (the fused attention form, training and
inference; ``lit`` its KᵀV path for Lit), ``chunk`` and ``recurrent`` (inference), ``gates`` (LION-S's log gates);
``common`` holds what they share. ``lion.attention`` imports the kernels it dispatches to directly."""
