"""Fused kernels of the vision baselines. selective_scan.py: Mamba-1's selective scan in Triton (forward and
backward), used by models_vim.py on CUDA; importing it needs triton."""
