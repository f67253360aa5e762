"""Where a float32 trial's time goes on a CPU without bf16 instructions (avx2 only), and what the
settings torch offers there take back: float32 matmul precision, torch.compile of the blocks, and
threads per worker (issue 23). On real tweets and all-MiniLM-L6-v2, the same configs under
several seeds (their spread is the noise a difference has to beat), always in float32: where bf16
is not native, autoft's auto precision computes in float32.

    python benchmarks/cpu_fp32.py --isa avx2 [--samples 600] [--val-samples 400] [--epochs 3]
        [--layers 2 6] [--seeds 0 1] [--threads 1]
    python benchmarks/cpu_fp32.py --isa avx2 --threads 2   # the same; wall-seconds show the gain
    python benchmarks/cpu_fp32.py --isa native             # this CPU's own kernels, for scale

--isa avx2 emulates an avx2-only CPU on a newer one: the script runs itself again with
ATEN_CPU_CAPABILITY=avx2 (torch's own vectorized kernels and inductor's generated code use AVX2 at
most), ONEDNN_MAX_CPU_ISA=AVX2 (oneDNN, the matmuls and layers torch hands it, uses no AVX-512,
VNNI, bf16 or AMX) and MKL_ENABLE_INSTRUCTIONS=AVX2 (MKL's BLAS, float32 matmuls, dispatches to
AVX2 code). It limits the instructions only: the cores, caches, memory and clocks stay this
machine's, so absolute speeds are not an avx2 machine's, while the ratios between variants are the
question. The header prints torch's CPU capability so the table shows what ran.

Variants: "fp32" as autoft trains now; "matmul-medium" lets float32 matmuls compute in bf16
inside (torch.set_float32_matmul_precision("medium") and oneDNN's own switch,
torch.backends.mkldnn.matmul.fp32_precision = "bf16"; without bf16 instructions oneDNN may
keep float32); "compiled" compiles each transformer block with torch.compile(dynamic=True), as
blocks are what a trial spends its time in (the prefix cache swaps frozen blocks for stand-ins, so
the whole model's forward would recompile at every step). Compiling is paid per process, by its
first trial and again where shapes or modes are new; its seconds (dynamo's count) are listed per
seed and are inside both samples per second, and "per wall-s without" leaves them out. Trials run
as precision.py runs them. Inductor keeps what it built on disk (/tmp/torchinductor_<user>), so
a process after the first compiles faster (52 s against 15 s in the smoke test);
TORCHINDUCTOR_FORCE_DISABLE_CACHES=1 measures a cold start, as a new machine pays it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from precision import compare, comparison_parser, prepare

from autoft.model import find_blocks
from autoft.precision import set_precision

AVX2_ENVIRONMENT = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2",
                    "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
DEFAULT_MATMUL = (torch.get_float32_matmul_precision(),
                  torch.backends.mkldnn.matmul.fp32_precision)


def set_matmul(legacy: str, onednn: str) -> None:
    """Both switches: in torch 2.13 "medium" already sets oneDNN's to bf16, set here anyway so
    the variant means the same under a torch that keeps them apart."""
    torch.set_float32_matmul_precision(legacy)
    torch.backends.mkldnn.matmul.fp32_precision = onednn


def compile_blocks(model: torch.nn.Module) -> None:
    blocks = find_blocks(model)
    for i in range(len(blocks)):
        blocks[i].compile(dynamic=True)


def plain() -> None:
    set_matmul(*DEFAULT_MATMUL)


def matmul_medium() -> None:
    set_matmul("medium", "bf16")


def compiled():
    plain()
    return compile_blocks


VARIANTS = {"fp32": plain, "matmul-medium": matmul_medium, "compiled": compiled}


def cpu_info(field: str) -> str:
    """The first `field` of /proc/cpuinfo ("model name", "flags")."""
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    return next((line.split(":", 1)[1].strip() for line in lines
                 if line.split(":", 1)[0].strip() == field), "")


def main() -> None:
    parser = comparison_parser(__doc__.splitlines()[0], [0, 1])
    parser.add_argument("--isa", choices=("avx2", "native"), default="avx2",
                        help="avx2: emulate a CPU without AVX-512 or bf16 (see the docstring)")
    args = parser.parse_args()
    if args.isa == "avx2" and any(os.environ.get(k) != v for k, v in AVX2_ENVIRONMENT.items()):
        # torch, oneDNN and MKL read these once, when loaded: run again with them set
        os.execve(sys.executable, [sys.executable, *sys.argv], os.environ | AVX2_ENVIRONMENT)
    torch.set_num_threads(args.threads)
    set_precision("fp32")
    print(f"{cpu_info('model name')}; avx512_bf16 in flags: "
          f"{'avx512_bf16' in cpu_info('flags').split()}; isa {args.isa} "
          f"(torch runs {torch.backends.cpu.get_cpu_capability()}); {args.threads} thread(s); "
          f"load before: {os.getloadavg()[0]:.1f}")
    config, data = prepare(args.samples, args.val_samples, 0)
    print(f"{len(data.train)} tweets, {len(data.validation)} to score ({data.metric}), "
          f"{args.epochs} epochs, seeds {args.seeds}, float32")
    compare(config, data, args, "variant", VARIANTS)


if __name__ == "__main__":
    main()
