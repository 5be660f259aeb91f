"""Compiles every variant of the fused kernels for a GPU target without a GPU (Triton's bundled ptxas).

Catches what the CPU interpreter accepts but the compiler refuses. Run it with the Triton version of the GPU machine
(e.g. ``pip install --target t36 --no-deps triton==3.6.0; PYTHONPATH=t36:. python benchmarks/triton_compile_check.py``):

    python benchmarks/triton_compile_check.py [--arch 90]
"""
import argparse
import itertools

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from lion.ops.triton import kernels

KERNELS = [(kernels.fwd_kernel, 7), (kernels.bwd_kv_kernel, 11), (kernels.bwd_q_kernel, 12)]  # (kernel, #pointers)
Q_LIKE = ("Q", "K", "DQ", "DK")
V_LIKE = ("V", "NUM", "DO", "DVV")


def signature(kern, n_ptr, consts, v_dtype, q_dtype):
    sig = {}
    for i, name in enumerate(kern.arg_names):
        if name in consts:
            sig[name] = "constexpr"
        elif i < n_ptr:
            sig[name] = "*" + (q_dtype if name in Q_LIKE else v_dtype if name in V_LIKE else "fp32")
        else:
            sig[name] = "fp32" if name == "scale" else "i32"
    return sig


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", type=int, default=90)
    args = ap.parse_args()
    target = GPUTarget("cuda", args.arch, 32)
    failed = 0
    for (kern, n_ptr), has_mask, has_dden, v_dtype, q_dtype in itertools.product(
            KERNELS, [True, False], [True, False], ["bf16", "fp32"], ["fp32", "bf16"]):
        consts = dict(HAS_MASK=has_mask, PREC="ieee" if v_dtype == "fp32" else "tf32", BLOCK_M=64, BLOCK_N=32,
                      BLOCK_D=64, BLOCK_DV=64)
        if "HAS_DDEN" in kern.arg_names:
            consts["HAS_DDEN"] = has_dden
        src = ASTSource(fn=kern, signature=signature(kern, n_ptr, consts, v_dtype, q_dtype),
                        constexprs={(kern.arg_names.index(k),): v for k, v in consts.items()})
        try:
            triton.compile(src, target=target)
        except Exception as e:  # report every failing variant, not just the first
            failed += 1
            print(f"FAILED {kern.__name__} mask={has_mask} dden={has_dden} v={v_dtype} q={q_dtype}: {e}")
    print(f"triton {triton.__version__}, sm_{args.arch}: {'all variants compile' if not failed else f'{failed} failed'}")
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
