"""The three exact forms of bidirectional masked linear attention.

Each form computes, per head, the unnormalised sums

    num_i = Σ_j A_ij v_j,   den_i = Σ_j A_ij,   A_ij = scale · (q_i · k_j) · M_ij

with M the LION mask given by log gates (``lion.masks``). ``naive`` (the attention form) is the reference;
``recurrent`` (RNN form) and ``chunk`` must equal it to float tolerance.
"""
from lion.ops.chunk import chunk_sums
from lion.ops.naive import naive_scores, naive_sums
from lion.ops.recurrent import recurrent_sums

__all__ = ["naive_sums", "naive_scores", "recurrent_sums", "chunk_sums"]
