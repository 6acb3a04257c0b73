"""The hardware floor of a workload on a machine: the least wall time its FLOPs allow at the profile's best
measured GEMM rate, and its weight/KV bytes at the measured read bandwidth, whichever is larger.

    python -m bench.compute_floor --model mixtral-mini --profile cpu-amd-epyc-2c --prompts 256 \
        --prompt-len 128 --gen-len 64

A throughput target above `generated tokens / floor` cannot be met on that machine by any engine; this is
the figure BENCHMARKS.md quotes beside such targets.
"""

from __future__ import annotations

import argparse

from planner.hardware.profile import load_profile
from planner.perf.costs import ModelCosts
from planner.specs.spec import load_spec


def floor_seconds(
    model: str, profile_name: str, prompts: int, prompt_len: int, gen_len: int
) -> dict[str, float]:
    spec = load_spec(model)
    costs = ModelCosts(spec)
    profile = load_profile(profile_name)
    peak_flops = max(max(c.tflops) for c in profile.gemm_curves) * 1e12
    read_bps = profile.memory.read_gbps * 1e9
    # Prefill needs the LM head only for each prompt's last token.
    prefill_flops = (
        sum(costs.flops_per_token(t) for t in range(1, prompt_len + 1))
        - (prompt_len - 1) * costs.lm_head_flops_per_token()
    ) * prompts
    decode_flops = sum(costs.flops_per_token(prompt_len + t) for t in range(1, gen_len)) * prompts
    # Every decode step reads at least the experts its tokens activate (at most all) plus the dense weights once.
    decode_bytes = (gen_len - 1) * costs.total_bytes()
    compute_s = (prefill_flops + decode_flops) / peak_flops
    return {
        "prefill_flops": prefill_flops,
        "decode_flops": decode_flops,
        "compute_s": compute_s,
        "weight_read_s": decode_bytes / read_bps,
        "peak_tflops": peak_flops / 1e12,
        "floor_s": max(compute_s, decode_bytes / read_bps),
        "max_generated_tok_s": prompts * gen_len / max(compute_s, decode_bytes / read_bps),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mixtral-mini")
    parser.add_argument("--profile", default="cpu-amd-epyc-2c")
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--gen-len", type=int, default=64)
    args = parser.parse_args()
    f = floor_seconds(args.model, args.profile, args.prompts, args.prompt_len, args.gen_len)
    print(f"{args.model} on {args.profile}: {args.prompts} prompts x ({args.prompt_len} + {args.gen_len})")
    print(
        f"  FLOPs: prefill {f['prefill_flops'] / 1e12:.2f} T, decode {f['decode_flops'] / 1e12:.2f} T; "
        f"best measured GEMM rate {f['peak_tflops']:.3f} TFLOP/s -> {f['compute_s']:.1f} s"
    )
    print(f"  weights read once per decode step at the measured read bandwidth: {f['weight_read_s']:.1f} s")
    print(
        f"  floor {f['floor_s']:.1f} s -> at most {f['max_generated_tok_s']:.0f} generated tok/s end to end"
    )


if __name__ == "__main__":
    main()
