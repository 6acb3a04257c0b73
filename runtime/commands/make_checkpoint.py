"""`runtime make-checkpoint`: write a random-weight checkpoint with a model's real shapes (HF layout).

Flags: --model SPEC (name, YAML or config.json), --layers N (truncate), --dtype bf16|fp16|fp32, --seed S,
--max-shard-gb X, --out DIR, --quant fp8|mxfp4 (quantized weights in that format's on-disk layout). See `runtime.checkpoint.writer` for what is written.
"""

from __future__ import annotations

import argparse
import sys


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "make-checkpoint",
        help="write a random-weight checkpoint with a model's real shapes",
        description="Write a random-weight HF checkpoint (sharded safetensors, config.json, tokenizer) "
        "with the real tensor shapes of a model, without downloading anything.",
    )
    parser.add_argument(
        "--model", required=True, help="model spec: short or full name, YAML path, or config.json"
    )
    parser.add_argument("--layers", type=int, default=None, help="keep only the first N layers")
    parser.add_argument("--dtype", default="bf16", choices=("bf16", "fp16", "fp32"), help="weight dtype")
    parser.add_argument(
        "--quant",
        choices=("fp8", "mxfp4"),
        default=None,
        help="store weights quantized: fp8 (e4m3, 128x128 block scales, DeepSeek-V3 layout) or mxfp4 "
        "(routed experts, gpt-oss layout)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed, same bytes)")
    parser.add_argument("--max-shard-gb", type=float, default=2.0, help="largest shard in GB (1e9 bytes)")
    parser.add_argument("--out", required=True, help="output directory (new, empty, or a moelens checkpoint)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from planner.specs.spec import load_spec
    from runtime.checkpoint.names import expected_tensors
    from runtime.checkpoint.writer import write_random_checkpoint

    spec = load_spec(args.model)
    if args.layers is not None:
        spec = spec.with_layers(args.layers)
    total = len(expected_tensors(spec))
    with tqdm(total=total, unit="tensor", disable=args.quiet, file=sys.stderr) as bar:
        written = write_random_checkpoint(
            spec,
            args.out,
            dtype=args.dtype,
            seed=args.seed,
            max_shard_bytes=int(args.max_shard_gb * 1e9),
            on_tensor=lambda _: bar.update(),
            quant=args.quant,
        )
    print(
        f"wrote {written.dir}: {written.spec.name} ({written.spec.family}, {written.spec.num_layers} layers), "
        f"{written.num_parameters / 1e9:.3f} B parameters, {written.total_bytes / 1e9:.2f} GB {args.dtype}"
        f"{' + ' + args.quant if args.quant else ''} ({written.spec.weights_label}) "
        f"in {written.num_shards} shard(s), seed {args.seed}, {written.seconds:.1f} s"
    )
    return 0
