"""The first run on a GPU: staged checks, each with its own time budget, each result saved the moment it ends.

    python -m bench.gpu_smoke --out DIR [--dry-run] [--budget-s 540] [--only STAGE ...]

Stages (budget in seconds on a GPU; `bench.gpu_smoke_stages` holds the ones past the link):
1. environment (15): device, memory, PCIe generation and width (nvidia-smi), host memory and cores, versions;
2. pinning_and_link (60): exact-size pinning (`runtime.engine.host_arena`, cudaHostRegister) against the
   caching host allocator (`pin_memory=True`) for layer-sized buffers (bytes asked vs reserved, seconds);
   H2D / D2H pinned and pageable at several sizes (`runtime.profiler.links`); pinned H2D alone and beside
   CPU memory traffic (threads copying host buffers meanwhile);
3. gemm (60): the expert FFN's rate at real expert shapes (Mixtral-8x7B, DeepSeek-V2-Lite) over row counts,
   and the per-expert cost of the looped path against the grouped one at one layer of a decode batch;
4. exactness (60): greedy tokens of a tiny fp32 model on the CUDA path against the reference forward:
   weights resident, streamed, and streamed with delays injected on the copy stream (to widen races);
5. sync_audit (45): `torch.cuda.set_sync_debug_mode("warn")` over engine steps (every synchronising call
   counted, its message kept) and a profiler trace of a prefill and two decode steps (`trace.json`);
6. predicted_mixtral, predicted_deepseek (110 each): Mixtral-8x7B and DeepSeek-V2-Lite truncated to 4 layers,
   random weights built in memory (`runtime.checkpoint.in_memory`, no disk), device memory capped at the
   smallest fraction of the weights (from half) that fits two stream slots, so experts stream; the plan's predicted tok/s against the engine's achieved, module times, bytes
   streamed per token;
7. hf_offload (75, only if time is left): HF transformers + accelerate `device_map` offload on the DeepSeek
   model under the same cap.
Each stage appends one JSON line to `DIR/results.jsonl` when it ends (a stage past its budget is stopped
and saved with what it had, `status: timeout`), then `DIR/summary.md` is rewritten; a crash or a kill of the
whole run leaves every finished stage on disk. `--dry-run` runs every stage's logic on the CPU at small shapes
(the tests run it); without CUDA and without `--dry-run` the script says so and exits 0.
Total budget by default 540 s (9 minutes on one H100).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from planner.units import GiB

TOTAL_BUDGET_S = 540.0


class StageTimeout(Exception):
    pass


@dataclass
class Context:
    device: object  # torch.device
    dry_run: bool
    out: Path
    budget_s: float
    began: float = field(default_factory=time.perf_counter)
    partial: dict = field(default_factory=dict)  # what the stage has so far (saved on a timeout)

    def left(self) -> float:
        return self.budget_s - (time.perf_counter() - self.began)

    def keep(self, key: str, value) -> None:
        self.partial[key] = value


# ----- stages 1 and 2 -----
def environment(ctx: Context) -> dict:
    import platform
    import subprocess

    import psutil
    import torch

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cpu_cores": os.cpu_count(),
        "host_memory_gib": psutil.virtual_memory().total / GiB,
        "host_available_gib": psutil.virtual_memory().available / GiB,
        "device": str(ctx.device),
    }
    if ctx.device.type == "cuda":
        props = torch.cuda.get_device_properties(ctx.device)
        info.update(
            device_name=props.name,
            device_memory_gib=props.total_memory / GiB,
            multiprocessors=props.multi_processor_count,
            capability=f"{props.major}.{props.minor}",
        )
        query = "pcie.link.gen.current,pcie.link.gen.max,pcie.link.width.current,driver_version"
        try:
            line = subprocess.run(
                ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.splitlines()[0]
            gen, gen_max, width, driver = (v.strip() for v in line.split(","))
            info.update(pcie_gen=gen, pcie_gen_max=gen_max, pcie_width=width, driver=driver)
        except (OSError, IndexError, ValueError, subprocess.SubprocessError) as err:
            info["pcie"] = f"nvidia-smi unavailable: {err}"
    return info


def _pin_sizes(ctx: Context) -> list[int]:
    return [1 << 20, 3 << 20, 5 << 20] if ctx.dry_run else [int(0.3 * GiB), int(1.1 * GiB), int(2.3 * GiB)]


def _pinning(ctx: Context) -> list[dict]:
    import torch

    from runtime.engine.host_arena import HostArena, PinRecorder, default_pinner

    rows = []
    for nbytes in _pin_sizes(ctx):
        pinner = PinRecorder() if ctx.dry_run else default_pinner(ctx.device)
        began = time.perf_counter()
        arena = HostArena([nbytes], pinner)
        arena.pin()
        exact_s = time.perf_counter() - began
        row = {"asked_bytes": nbytes, "exact_pinned_bytes": arena.nbytes, "exact_s": exact_s}
        arena.release()
        if ctx.device.type == "cuda":
            before = (
                torch.cuda.host_memory_stats().get("reserved_bytes.current", 0)
                if hasattr(torch.cuda, "host_memory_stats")
                else None
            )
            began = time.perf_counter()
            cached = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
            row["caching_allocator_s"] = time.perf_counter() - began
            if before is not None:
                row["caching_allocator_reserved_bytes"] = (
                    torch.cuda.host_memory_stats().get("reserved_bytes.current", 0) - before
                )
            del cached
        rows.append(row)
        ctx.keep("pinning", rows)
    return rows


def _copy_rate(ctx: Context, src, dst, repeats: int) -> float:
    import torch

    from runtime.transfer import copy_to_device

    stream = torch.cuda.Stream(ctx.device) if ctx.device.type == "cuda" else None
    copy_to_device(dst, src, stream)
    if stream is not None:
        stream.synchronize()
    began = time.perf_counter()
    for _ in range(repeats):
        copy_to_device(dst, src, stream)
    if stream is not None:
        stream.synchronize()
    return src.numel() * repeats / (time.perf_counter() - began) / 1e9


def _h2d_beside_memory_traffic(ctx: Context, nbytes: int) -> dict:
    """Pinned H2D GB/s alone, then while threads copy host buffers (what KV reads and packing do)."""
    import numpy as np
    import torch

    pin = ctx.device.type == "cuda"
    src = torch.randint(0, 256, (nbytes,), dtype=torch.uint8, pin_memory=pin)
    dst = torch.empty(nbytes, dtype=torch.uint8, device=ctx.device)
    alone = _copy_rate(ctx, src, dst, 5)
    stop, threads = threading.Event(), []
    copied = [0]

    def traffic() -> None:
        a, b = np.ones(64 << 20, dtype=np.uint8), np.empty(64 << 20, dtype=np.uint8)
        while not stop.is_set():
            np.copyto(b, a)
            copied[0] += a.nbytes

    for _ in range(max(1, min(8, (os.cpu_count() or 2) // 2))):
        threads.append(threading.Thread(target=traffic, daemon=True))
        threads[-1].start()
    began = time.perf_counter()
    beside = _copy_rate(ctx, src, dst, 5)
    seconds = time.perf_counter() - began
    stop.set()
    for thread in threads:
        thread.join()
    return {
        "bytes": nbytes,
        "h2d_alone_gbps": alone,
        "h2d_beside_traffic_gbps": beside,
        "traffic_threads": len(threads),
        "traffic_gbps": copied[0] / seconds / 1e9,
    }


def pinning_and_link(ctx: Context) -> dict:
    import torch

    out = {"pinning": _pinning(ctx)}
    sizes = (1 << 12, 1 << 16, 1 << 20) if ctx.dry_run else (1 << 12, 1 << 16, 1 << 20, 1 << 24, 1 << 28)
    if ctx.device.type == "cuda":
        from runtime.profiler.links import measure_links

        links = measure_links(ctx.device, sizes, repeats=5, budget_per_point_s=0.5)
        out["links"] = {
            name: {"sizes": list(sizes), "gbps": list(curve.gbps)}
            for name, curve in (
                (n, getattr(links, n)) for n in ("h2d_pinned", "h2d_pageable", "d2h_pinned", "d2h_pageable")
            )
        }
    else:
        src = torch.randint(0, 256, (max(sizes),), dtype=torch.uint8)
        out["links"] = {
            "host_copy": {
                "sizes": list(sizes),
                "gbps": [_copy_rate(ctx, src[:n], torch.empty(n, dtype=torch.uint8), 5) for n in sizes],
            }
        }
    ctx.keep("links", out["links"])
    out["beside_memory_traffic"] = _h2d_beside_memory_traffic(ctx, (8 << 20) if ctx.dry_run else (256 << 20))
    return out


# ----- the driver -----
def stages() -> list[tuple[str, float, Callable[[Context], dict]]]:
    from bench import gpu_smoke_stages as s

    return [
        ("environment", 15, environment),
        ("pinning_and_link", 60, pinning_and_link),
        ("gemm", 60, s.gemm),
        ("exactness", 60, s.exactness),
        ("sync_audit", 45, s.sync_audit),
        ("predicted_mixtral", 110, s.predicted_mixtral),
        ("predicted_deepseek", 110, s.predicted_deepseek),
        ("hf_offload", 75, s.hf_offload),
    ]


def _alarm(_signum, _frame):
    raise StageTimeout()


def run_stage(name: str, budget_s: float, fn: Callable[[Context], dict], ctx: Context) -> dict:
    ctx.partial, ctx.budget_s, ctx.began = {}, budget_s, time.perf_counter()
    signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, budget_s)
    try:
        found = fn(ctx)
        result = {"stage": name, "status": "skipped" if "skipped" in found else "ok", **found}
    except StageTimeout:
        result = {"stage": name, "status": "timeout", **ctx.partial}
    except Exception as err:  # a failed stage is a result too; the next stages still run
        result = {
            "stage": name,
            "status": "error",
            "error": f"{type(err).__name__}: {err}"[:2000],
            **ctx.partial,
        }
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    result["seconds"] = time.perf_counter() - ctx.began
    result["budget_s"] = budget_s
    return result


def save(out: Path, result: dict) -> None:
    with open(out / "results.jsonl", "a") as f:
        f.write(json.dumps(result, default=str) + "\n")
        f.flush()
        os.fsync(f.fileno())
    lines = ["# gpu_smoke results", ""]
    for line in (out / "results.jsonl").read_text().splitlines():
        record = json.loads(line)
        lines.append(
            f"## {record['stage']}: {record['status']} ({record['seconds']:.1f} s of {record['budget_s']:g})"
        )
        lines += [
            "```json",
            json.dumps(
                {k: v for k, v in record.items() if k not in ("stage", "status")}, indent=1, default=str
            )[:6000],
            "```",
            "",
        ]
    (out / "summary.md").write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.gpu_smoke", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, required=True, help="directory for results.jsonl, summary.md, trace"
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="every stage's logic on the CPU at small shapes"
    )
    parser.add_argument("--budget-s", type=float, default=TOTAL_BUDGET_S, help="the whole run's budget")
    parser.add_argument("--only", nargs="+", help="run only these stages")
    args = parser.parse_args(argv)
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print(
            "gpu_smoke: no CUDA GPU here (torch.cuda.is_available() is False); pass --dry-run to check the "
            "stages on the CPU"
        )
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    ctx = Context(
        device=torch.device("cpu" if args.dry_run else "cuda"),
        dry_run=args.dry_run,
        out=args.out,
        budget_s=0.0,
    )
    began = time.perf_counter()
    for name, budget_s, fn in stages():
        if args.only and name not in args.only:
            continue
        left = args.budget_s - (time.perf_counter() - began)
        if name == "hf_offload" and left < budget_s or left < 5:
            result = {
                "stage": name,
                "status": "skipped",
                "reason": f"{left:.0f} s left of the run's budget",
                "seconds": 0.0,
                "budget_s": budget_s,
            }
        else:
            result = run_stage(name, min(budget_s, left), fn, ctx)
        save(args.out, result)
        print(f"{name}: {result['status']} in {result['seconds']:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
