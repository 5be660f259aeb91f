"""Compiles every variant of the fused attention kernels (and the chunk and RNN forms' kernels, the chunk form's
training kernels, the LION-S gate kernels and the Vim baseline's selective-scan kernels) for sm_90 without a GPU and
reports registers and spills (Triton's bundled ptxas -v). Catches what the CPU interpreter accepts but the compiler
refuses, and shows which tile configs spill (the config lists in lion/ops/triton/naive.py are chosen by measured
time; some spill a little).

    python benchmarks/triton_compile_check.py [--regs]
"""
import argparse
import itertools
import os
import subprocess
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from image_classification.ops import selective_scan as S
from lion.ops.triton import chunk as CH
from lion.ops.triton import chunk_grad as CG
from lion.ops.triton import gates as G
from lion.ops.triton import lit as LIT
from lion.ops.triton import naive as A
from lion.ops.triton import recurrent as RN

BF, F32 = "*bf16", "*fp32"
POINTERS = dict(Q=BF, K=BF, V=BF, P=F32, C=F32, R="*i32", LAM=F32, KEEP="*i1", SEED="*i64", Y=BF, DEN=F32, KF=BF,
                QF=BF, DY=BF, DYN=BF, DLT=F32, DQ=BF, DQA=F32, DK=BF, DVV=BF, DP=F32, DC=F32, DLA=F32, LA1=F32,
                LA2=F32, PERM="*i32", PC=F32, SP=F32, ZP=F32, SM=F32, ZV=F32, DSP=F32, DZP=F32, DSM=F32, DZV=F32)
FLOATS = ("scale", "eps", "dropout_p", "inv_keep", "log_eps")
INFERENCE_POINTERS = dict(Q=BF, K=BF, V=BF, LA=F32, PERM="*i32", KEEP="*i1", S=BF, Z=F32, G=F32, OUT=BF, NUMBUF=F32,
                          DENBUF=F32, NUM=F32, DEN=F32)
CHUNK_TRAIN_POINTERS = dict(INFERENCE_POINTERS, CS=F32, W=BF, GD=F32)
CHUNK_TOKEN_POINTERS = dict(Q=BF, K=BF, KEEP="*i1", DY=BF, Y=BF, DEN=F32, XF=BF, KF=BF, DO=BF, CS=F32, GX=BF, GK=BF,
                            DQ=BF, DK=BF)
GATE_POINTERS = dict(Z=BF, PERM="*i64", OUT=F32, DOUT=F32, DZ=BF)
SCAN_POINTERS = dict(X=BF, DT=F32, A=F32, B=BF, C=BF, Y=F32, H0=F32, DY=F32, SCR=F32, DX=F32, DDT=F32, DA=F32, DB=F32,
                     DC=F32)
TARGET = GPUTarget("cuda", 90, 32)


def compile_kernel(kernel, consts, num_warps, pointers=None):
    pointers = POINTERS if pointers is None else pointers
    sig = {n: "constexpr" if n in consts else pointers.get(n, "fp32" if n in FLOATS else "i32")
           for n in kernel.arg_names}
    return triton.compile(ASTSource(fn=kernel, signature=sig, constexprs=consts), target=TARGET,
                          options=dict(num_warps=num_warps, num_stages=2))


def ptxas_report(compiled) -> str:
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(compiled.asm["ptx"])
    try:
        out = subprocess.run([ptxas, "-v", "--gpu-name", "sm_90a", f.name, "-o", os.devnull], capture_output=True,
                             text=True).stderr
    finally:
        os.unlink(f.name)
    return " ".join(line.split("info    :")[-1].strip() for line in out.splitlines()
                    if "spill" in line or "Used" in line)


def variants():
    dims = dict(PREC="tf32", BLOCK_D=64, BLOCK_DV=64)
    # attention._gate_mode; 'sums': per-token gates, whose prefix sums _prep_kernel forms
    # 'counts': per-head gates with padding (the kernels raise λ to counts of real tokens)
    gates = [(0, None), (1, "sums"), (2, "sums"), (1, "decay"), (2, "decay"), (1, "counts"), (2, "counts")]
    for (nord, mode), natural, feature, normalize, drop in itertools.product(gates, [True, False], [1, 2],
                                                                             [True, False], [False, True]):
        if nord == 0 and not natural:
            continue
        c = dict(dims, NORD=nord, NATURAL=natural, DECAY=mode in ("decay", "counts"), COUNTS=mode == "counts",
                 FEATURE=feature, NORMALIZE=normalize, DROPOUT=drop)
        for cfg in A._fwd_configs():
            yield "fwd", A._fwd_kernel, dict(c, **cfg.kwargs), cfg.num_warps
        for cfg in A._bwd_configs():
            yield "bwd", A._bwd_kernel, dict(c, HAS_KEEP=True, **cfg.kwargs), cfg.num_warps
    for feature, keep in itertools.product([1, 2], [True, False]):
        for cfg, one_split in itertools.product(LIT._LIT_CONFIGS, [True, False]):
            for name, extra in (("lit_state", {}), ("lit_out", dict(WITH_STATE=one_split)),
                                ("lit_bwd_q", dict(WITH_KV=one_split)), ("lit_bwd_kv", {})):
                if extra or one_split:
                    yield name, getattr(LIT, f"_{name}_kernel"), dict(dims, FEATURE=feature, HAS_KEEP=keep, **extra,
                                                                      **cfg.kwargs), cfg.num_warps
    orders = [(False, True, 1), (True, True, 1), (True, False, 1), (True, False, 2)]  # (sums, natural, orders)
    for wq, wdy, norm, (sums, natural, nord) in itertools.product([True, False], [True, False], [True, False], orders):
        yield "prep", A._prep_kernel, dict(FEATURE=2, HAS_KEEP=True, WITH_Q=wq, WITH_DY=wdy, NORMALIZE=norm,
                                           SUMS=sums, NATURAL=natural, NORD=nord, BLOCK=32, BLOCK_D=64,
                                           BLOCK_DV=64), 4
    for sums, natural, nord in orders:
        yield "bwd_q", A._bwd_q_kernel, dict(FEATURE=2, SUMS=sums, NATURAL=natural, NORD=nord, BLOCK=32,
                                             BLOCK_D=64), 4


def inference_variants():
    """The chunk and RNN forms' kernels (forward only) with gates, ♮ permutations and padding, bf16 inputs."""
    flags = dict(HAS_GATES=True, HAS_KEEP=True, FEATURE=2, BLOCK_DK=64)
    for perm in (False, True):
        chunk = dict(flags, HAS_PERM=perm, LOWP=True, PREC="ieee", BLOCK_C=64, BLOCK_DV=64, DVP=64, TRANS=False, SCAL=0,
                     ZW=64)
        yield "chunk_states", CH._chunk_states, dict(chunk, WITH_DEN=True), 4
        yield "chunk_output", CH._chunk_output, dict(chunk, NORMALIZE=True, PASS=0, STORE_DEN=False, GATE_DOT=False), 4
        yield "rnn", RN._rnn_kernel, dict(flags, HAS_PERM=perm, NORMALIZE=True, BLOCK_T=RN.BLOCK_T,
                                          BLOCK_DV=RN.BLOCK_DV), RN.NUM_WARPS


def chunk_train_variants():
    """The chunk form's training kernels (lion.ops.triton.chunk_grad), bf16, per-token gates, padding, natural and
    ♮ orders: the forward storing the normaliser; the backward's three operators (dq: mask M with the score term on
    queries and the gates' dot products; dk: Mᵀ with the term on keys and the dot products; dv: Mᵀ), the scan with
    vector states."""
    base = dict(HAS_GATES=True, HAS_KEEP=False, FEATURE=0, LOWP=True, PREC="ieee", BLOCK_C=64, BLOCK_DK=64,
                BLOCK_DV=64, DVP=64, ZW=64)
    for perm in (False, True):
        fwd = dict(base, HAS_PERM=perm, HAS_KEEP=True, FEATURE=2, TRANS=False, SCAL=0)
        yield "chunk_states fwd", CH._chunk_states, dict(fwd, WITH_DEN=True), 4
        yield "chunk_output fwd", CH._chunk_output, dict(fwd, NORMALIZE=True, PASS=2 if perm else 0, STORE_DEN=True,
                                                         GATE_DOT=False), 4
        for trans, scal, gate_dot in ((False, 1, True), (True, 2, True), (True, 0, False)):  # dq, dk, dv
            op = dict(base, HAS_PERM=perm, TRANS=trans, SCAL=scal)
            yield "chunk_states bwd", CH._chunk_states, dict(op, WITH_DEN=False), 4
            for pass_ in ((1, 3) if perm else (0,)):
                yield "chunk_output bwd", CH._chunk_output, dict(op, NORMALIZE=False, PASS=pass_, STORE_DEN=False,
                                                                 GATE_DOT=gate_dot), 4
    for with_den in (True, False):
        yield "scan_states", CH._scan_states, dict(HAS_GATES=True, WITH_DEN=with_den, BLOCK_DK=64, DVP=64, ROWS=16,
                                                   ZW=64, ZROWS=16), 4


def chunk_token_variants():
    """The chunk form's per-token training kernels: φ, dy / D and the score term; φ's derivative."""
    for normalize in (True, False):
        yield "chunk_prep", CG._prep_kernel, dict(FEATURE=2, HAS_KEEP=True, NORMALIZE=normalize, BLOCK=32, BLOCK_D=64,
                                                  BLOCK_DV=64), 4
    yield "chunk_phi_grad", CG._phi_grad_kernel, dict(FEATURE=2, HAS_KEEP=True, BLOCK=32, BLOCK_D=64), 4


def gate_variants():
    """The LION-S gate kernels: bf16 z (autocast), with and without a ♮ order, both gate forms."""
    for first, eps, perm in [(True, False, False), (True, False, True), (False, True, False)]:
        consts = dict(FIRST_ONE=first, EPS=eps, HAS_PERM=perm, BLOCK_L=G._TOKENS, BLOCK_H=8)
        yield "gates_fwd", G._gates_fwd_kernel, consts, 4
        yield "gates_bwd", G._gates_bwd_kernel, consts, 4


def scan_variants():
    """The selective scan as Vim-S runs it: bf16 x, B, C under autocast, fp32 dt, A and states; 16 states."""
    for name, kernel in (("scan_fwd", S._fwd_kernel), ("scan_bwd", S._bwd_kernel)):
        yield name, kernel, dict(BLOCK_D=32, BLOCK_N=16), 1


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--regs", action="store_true", help="print ptxas' register and spill report of every variant")
    args = ap.parse_args()
    n, failed = 0, []
    runs = [(v, None) for v in variants()] + [(v, INFERENCE_POINTERS) for v in inference_variants()] \
        + [(v, CHUNK_TRAIN_POINTERS) for v in chunk_train_variants()] \
        + [(v, CHUNK_TOKEN_POINTERS) for v in chunk_token_variants()] + [(v, GATE_POINTERS) for v in gate_variants()] \
        + [(v, SCAN_POINTERS) for v in scan_variants()]
    for (name, kernel, consts, warps), pointers in runs:
        flags = {k: v for k, v in consts.items() if k not in ("PREC", "BLOCK_D", "BLOCK_DV")}
        try:
            compiled = compile_kernel(kernel, consts, warps, pointers)
        except Exception as err:  # report every failing variant, not only the first
            failed.append(f"{name} warps={warps} {flags}: {type(err).__name__}")
            continue
        n += 1
        if args.regs:
            print(f"{name} warps={warps} {flags}: {ptxas_report(compiled)}")
    failures = f"; {len(failed)} failed:\n" + "\n".join(failed) if failed else ""
    print(f"compiled {n} kernel variants for sm_90{failures}")
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
