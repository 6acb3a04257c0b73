"""Host memory of a long prefill: one 8000-token prompt through `runtime.LLM` on a 2-layer qwen3-mini (the engine,
one prefill chunk of the whole prompt) peaks under 3 GiB of RSS. Eager attention would hold fp32 scores of
8 heads x 8000 x 8000 plus their softmax (the code before this test peaked at 5.8 GB); the engine's fused
attention in query blocks holds none (0.6 GB).
Measured in a fresh subprocess (its own VmHWM, `runtime.peak_rss`; `ru_maxrss` would carry this test
process's peak across fork and exec).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from planner.specs.spec import load_spec
from runtime.checkpoint import write_random_checkpoint

PROMPT_TOKENS = 8000
RSS_LIMIT_BYTES = 3 << 30

CHILD = textwrap.dedent("""
    import json, sys
    import torch
    from runtime import LLM
    from runtime.engine import EngineConfig
    from runtime.peak_rss import peak_rss_bytes
    from runtime.sampling import SamplingParams

    torch.set_num_threads(2)
    directory, tokens = sys.argv[1], int(sys.argv[2])
    config = EngineConfig.build(num_seqs=1, attn_batch=1, prefill_chunk=tokens, kv_budget_bytes=64 << 20,
                          kv_block_size=16, attention_threads=1)
    llm = LLM(directory, plan=config)
    prompt = torch.randint(3, 30000, (tokens,), generator=torch.Generator().manual_seed(0)).tolist()
    out = llm.generate([prompt], SamplingParams(max_tokens=2, ignore_eos=True))
    stats = llm.backend.last_stats
    print(json.dumps({"tokens": len(out[0].outputs[0].token_ids), "prefill_forwards": stats.prefill_forwards,
                      "prefill_tokens": stats.prefill_tokens,
                      "peak_rss_bytes": peak_rss_bytes()}))
""")


@pytest.mark.skipif(sys.platform != "linux", reason="VmHWM in /proc is Linux's")
def test_an_8000_token_prefill_peaks_under_3_gib(tmp_path):
    spec = load_spec("qwen3-mini").with_layers(2)
    write_random_checkpoint(spec, tmp_path / "ckpt", dtype="bf16", seed=1)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]), OMP_WAIT_POLICY="PASSIVE")
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path / "ckpt"), str(PROMPT_TOKENS)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    peak = result.pop("peak_rss_bytes")
    assert result == {"tokens": 2, "prefill_forwards": 1, "prefill_tokens": PROMPT_TOKENS}
    assert peak < RSS_LIMIT_BYTES, f"prefill peaked at {peak / 2**30:.2f} GiB of RSS"
