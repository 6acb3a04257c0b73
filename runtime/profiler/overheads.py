"""Per-call fixed costs and elementwise costs of the engine's own code paths: a profile's `overheads` section.

How it works: docs/design.md, `runtime/profiler/overheads.py`.
"""

from __future__ import annotations

import statistics
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from planner.hardware.profile import (
    ELEMENTWISE_COSTS,
    CallOverheads,
    ElementwiseBySize,
    ElementwiseCosts,
    Overheads,
)
from planner.specs.spec import ModelSpec
from runtime.profiler.sampling_costs import sampling_ns
from runtime.profiler.timing import Deadline, median_seconds, significant

PROBE_SPEC = ModelSpec(
    name="overhead-probe",
    family="mixtral",
    num_layers=2,
    hidden_size=256,
    num_heads=8,
    num_kv_heads=2,
    head_dim=64,
    vocab_size=512,
    num_experts=8,
    top_k=2,
    moe_intermediate_size=64,
    max_position_embeddings=4096,
)
MLA_PROBE_SPEC = replace(
    PROBE_SPEC,
    name="overhead-probe-mla",
    family="deepseek_v2",
    num_kv_heads=8,
    head_dim=128,
    attention="mla",
    q_lora_rank=0,
    kv_lora_rank=512,
    qk_rope_head_dim=64,
    qk_nope_head_dim=64,
    v_head_dim=64,
    norm_topk_prob=False,
)
DECODE_PROMPT, SHORT_PROMPT, LONG_PROMPT = 8, 16, 256
PREFILL_PROMPTS = 4
EXPERT_PROBE_SEQS = 8  # ~7.2 of the 8 experts hit per layer, against 2 at one sequence
ELEMENTWISE_WIDTH = 1024  # [rows, 1024]; RoPE as [rows, 8 heads, 128]
ROPE_HEADS = 8
SAMPLING_ROWS, SAMPLING_VOCAB = 64, 32768
NUM_TIMINGS = 17 + 3 * 8 + 6  # module paths, 3 elementwise ops at up to 8 sizes, 3 sampling modes
MIN_ELEMENT_NS = 1e-3  # a floor: marginal costs below timing noise still price as positive
MIN_SAMPLE_S = 0.01
DTYPE = torch.bfloat16


class _Clock:
    """median_seconds with an even share of one budget over the timings still to come."""

    def __init__(self, device: torch.device, budget_s: float, repeats: int):
        self.device, self.repeats = device, repeats
        self.deadline = Deadline(budget_s)
        self.left = NUM_TIMINGS

    def __call__(self, fn: Callable[[], object]) -> float:
        budget = self.deadline.share(self.left)
        self.left = max(self.left - 1, 1)
        return median_seconds(
            fn, self.device, warmup=2, repeats=self.repeats, budget_s=budget, min_sample_s=MIN_SAMPLE_S
        )


def _random(device: torch.device, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, device=device).to(DTYPE)


@dataclass
class _EngineRun:
    """Module seconds per call of one engine job at N sequences (one micro-batch, one token group)."""

    per_layer: dict[str, float]  # decode module seconds per step and layer
    per_step: dict[str, float]  # decode module seconds per step
    experts_per_layer: float  # activated experts per step and MoE layer
    untimed_step: float  # seconds per decode step outside every module timer
    untimed_forward: float  # seconds per prefill forward outside every module timer
    per_segment: dict[str, float]  # prefill module seconds per prompt and layer (one forward per job)


def _engine_run(
    engine, num_seqs: int, max_tokens: int, runs: int, prompt_len: int = DECODE_PROMPT
) -> _EngineRun:
    """The median over `runs` jobs of the engine, after one more that warms every shape up."""
    from runtime.report.job_run import fixed_length_requests

    layers = engine.spec.num_layers
    samples = []
    for _ in range(runs + 1):
        prompts = [[1 + i] + [2 + t % 500 for t in range(prompt_len - 1)] for i in range(num_seqs)]
        stats = engine.run(fixed_length_requests(prompts, max_tokens))
        decode, prefill = stats.module_seconds["decode"], stats.module_seconds["prefill"]
        steps, forwards = max(stats.decode_steps, 1), max(stats.prefill_forwards, 1)
        samples.append(
            _EngineRun(
                per_layer={k: v / steps / layers for k, v in decode.items()},
                per_step={k: v / steps for k, v in decode.items()},
                experts_per_layer=sum(stats.activated_experts_sum) / steps / layers,
                untimed_step=(stats.wall_seconds - stats.prefill_seconds - sum(decode.values())) / steps,
                untimed_forward=(stats.prefill_seconds - sum(prefill.values())) / forwards,
                per_segment={k: v / num_seqs / layers for k, v in prefill.items()},
            )
        )
    kept = samples[1:]

    def median(get: Callable[[_EngineRun], float]) -> float:
        return statistics.median(get(run) for run in kept)

    modules = set().union(*(run.per_step for run in kept), *(run.per_segment for run in kept))
    return _EngineRun(
        per_layer={m: median(lambda r, m=m: r.per_layer.get(m, 0.0)) for m in modules},
        per_step={m: median(lambda r, m=m: r.per_step.get(m, 0.0)) for m in modules},
        experts_per_layer=median(lambda r: r.experts_per_layer),
        untimed_step=median(lambda r: r.untimed_step),
        untimed_forward=median(lambda r: r.untimed_forward),
        per_segment={m: median(lambda r, m=m: r.per_segment.get(m, 0.0)) for m in modules},
    )


def _tiny_gemms(engine, clock: _Clock) -> dict[str, float]:
    """Seconds of the bare GEMMs each module runs at one token, at the probe's tiny shapes."""
    from runtime.engine.expert_stacks import expert_weights
    from runtime.model.layers import expert_ffn, rms_norm

    w, device = engine.store.layers[0], engine.device
    x = rms_norm(_random(device, 1, engine.spec.hidden_size), w["attn_norm"], engine.spec.rms_norm_eps)
    o_in = _random(device, 1, engine.spec.num_heads * engine.spec.head_dim)
    ffn = expert_weights(w, 0)
    head = engine.store.global_on_device("lm_head")
    return {
        "qkv_proj": clock(lambda: [F.linear(x, w[f"attn.{m}_proj"]) for m in "qkv"]),
        "o_proj": clock(lambda: F.linear(o_in, w["attn.o_proj"])),
        "router": clock(lambda: F.linear(x, w["moe.router"])),
        "expert": clock(lambda: expert_ffn(x, *ffn)),
        "lm_head": clock(lambda: F.linear(x, head)),
    }


def _engine_calls(engine, qk_engine, clock: _Clock, max_tokens: int, runs: int) -> dict[str, float]:
    """Per-call costs from the engine's own module timers, less the tiny GEMMs timed alone."""
    gemm = _tiny_gemms(engine, clock)
    one, many = (
        _engine_run(engine, 1, max_tokens, runs),
        _engine_run(engine, EXPERT_PROBE_SEQS, max_tokens, runs),
    )
    with_qk_norm = _engine_run(qk_engine, 1, max_tokens, runs)
    per_expert = (many.per_layer["experts"] - one.per_layer["experts"]) / max(
        many.experts_per_layer - one.experts_per_layer, 1e-9
    )
    return {
        "embed": one.per_step["embed"],
        "qkv_proj": one.per_layer["qkv_proj"] - gemm["qkv_proj"],
        "qk_norm": with_qk_norm.per_layer["qkv_proj"] - one.per_layer["qkv_proj"],
        "attention": one.per_layer["attention"],
        "o_proj": one.per_layer["o_proj"] - gemm["o_proj"],
        "router": one.per_layer["router"] - gemm["router"],
        "expert": per_expert - gemm["expert"],
        "expert_grouping": one.per_layer["experts"] - one.experts_per_layer * max(per_expert, 0.0),
        "lm_head": one.per_step["lm_head"] - gemm["lm_head"],
        "sampling": one.per_step["sampling"],
        "decode_step": one.untimed_step,
        "prefill_forward": one.untimed_forward,
    }


def _mla_calls(engine, clock: _Clock, max_tokens: int, runs: int) -> dict[str, float]:
    """MLA-path per-call costs at one sequence, less the bare GEMMs the planner prices for those modules."""
    spec, w, device = engine.spec, engine.store.layers[0], engine.device
    x = _random(device, 1, spec.hidden_size)
    latent = _random(device, 1, spec.kv_lora_rank)
    o_in = _random(device, 1, spec.num_heads * spec.v_head_dim)
    kv_b = w["attn.kv_b_proj"]  # its rows as matrices of the w_uk and w_uv halves' shapes
    w_uk = kv_b[: spec.num_heads * spec.qk_nope_head_dim].contiguous()
    w_uv = kv_b[: spec.num_heads * spec.v_head_dim].contiguous()
    qkv = clock(
        lambda: (F.linear(x, w["attn.q_proj"]), F.linear(x, w["attn.kv_a_proj"]), F.linear(latent, w_uk))
    )
    out = clock(lambda: (F.linear(latent, w_uv), F.linear(o_in, w["attn.o_proj"])))
    one = _engine_run(engine, 1, max_tokens, runs)
    return {
        "qkv_proj": one.per_layer["qkv_proj"] - qkv,
        "attention": one.per_layer["attention"],
        "o_proj": one.per_layer["o_proj"] - out,
    }


def _prefill_attention(engine, clock: _Clock, runs: int) -> dict[str, float]:
    """Seconds per prompt segment and layer of prefill attention from the engine's timer, at a short and a
    long prompt, less the two attention matmuls of the same shapes timed alone; the slope over score elements
    (heads x prompt^2) is `attention_score`, the rest `prefill_attention`."""
    spec, device = engine.spec, engine.device
    seconds, elements = {}, {}
    if spec.attention == "mla":  # queries score latent rows (R + P wide) and read back their first R
        qk_dim, v_dim = spec.kv_lora_rank + spec.qk_rope_head_dim, spec.kv_lora_rank
    else:
        qk_dim = v_dim = spec.head_dim
    for length in (SHORT_PROMPT, LONG_PROMPT):
        run = _engine_run(engine, PREFILL_PROMPTS, 1, runs, prompt_len=length)
        heads_q = _random(device, spec.num_heads, length, qk_dim)  # [H, T, D]
        heads_k = _random(device, spec.num_heads, qk_dim, length)
        values = _random(device, spec.num_heads, length, v_dim)
        probs = _random(device, spec.num_heads, length, length)  # [H, T, T]
        matmuls = clock(
            lambda q=heads_q, k=heads_k, p=probs, v=values: (torch.matmul(q, k), torch.matmul(p, v))
        )
        seconds[length] = run.per_segment["attention"] - matmuls
        elements[length] = spec.num_heads * length * length
    score = max(
        (seconds[LONG_PROMPT] - seconds[SHORT_PROMPT]) / (elements[LONG_PROMPT] - elements[SHORT_PROMPT]), 0.0
    )
    return {
        "attention_score": score,
        "prefill_attention": seconds[SHORT_PROMPT] - score * elements[SHORT_PROMPT],
    }


def _microbenchmarks(engine, clock: _Clock) -> dict[str, float]:
    """Shared experts and dense MLP (the probe has neither), timed alone at tiny shapes."""
    from runtime.engine.expert_stacks import expert_weights
    from runtime.model.layers import dense_mlp, expert_ffn
    from runtime.model.moe import shared_experts

    spec, w, device = engine.spec, engine.store.layers[0], engine.device
    x = _random(device, 1, spec.hidden_size)
    ffn = dict(zip(("gate_proj", "up_proj", "down_proj"), expert_weights(w, 0)))
    t_ffn = clock(lambda: expert_ffn(x, *ffn.values()))
    shared_spec = replace(
        spec,
        num_shared_experts=1,
        shared_intermediate_size=spec.moe_intermediate_size,
        has_shared_expert_gate=True,
    )
    shared_w = {f"moe.shared.{name}": t for name, t in ffn.items()} | {"moe.shared_gate": x.clone()}
    routed = torch.zeros_like(x)
    dense_w = {f"mlp.{name}": t for name, t in ffn.items()}
    return {
        "shared_experts": clock(lambda: routed + shared_experts(x, shared_w, shared_spec)) - t_ffn,
        "dense_mlp": clock(lambda: dense_mlp(x, dense_w, prefix="mlp.")) - t_ffn,
    }


def _elementwise_rows(max_rows: int) -> tuple[int, ...]:
    """1, 4, 16, ... rows below `max_rows`, then `max_rows`: calls from one token to a big prefill chunk."""
    rows = [r for r in (4**i for i in range(12)) if r < max_rows]
    return tuple(rows + [max_rows])


def _elementwise_ns(
    device: torch.device, max_rows: int, clock: _Clock
) -> tuple[dict[str, float], ElementwiseBySize]:
    """Marginal ns per element of RMSNorm, RoPE and a residual add on [rows, 1024] bf16 tensors at each size of
    `_elementwise_rows` (time less the one-row time, over the elements beyond one row: the fixed part of a
    call is in `call_s`); the scalars are the values at the largest size."""
    from runtime.model.layers import rms_norm
    from runtime.model.rope import apply_rope

    weight = torch.ones(ELEMENTWISE_WIDTH, dtype=DTYPE, device=device)
    head_dim = ELEMENTWISE_WIDTH // ROPE_HEADS

    def seconds(rows: int) -> dict[str, float]:
        x, y = _random(device, rows, ELEMENTWISE_WIDTH), _random(device, rows, ELEMENTWISE_WIDTH)
        heads = x.view(rows, ROPE_HEADS, head_dim)  # [rows, H, D]
        cos, sin = _random(device, rows, head_dim), _random(device, rows, head_dim)
        return {
            "norm": clock(lambda: rms_norm(x, weight, 1e-5)),
            "rope": clock(lambda: apply_rope(heads, cos, sin)),
            "add": clock(lambda: x.add_(y)),
        }

    rows = _elementwise_rows(max_rows)
    times = {r: seconds(r) for r in rows}
    sizes = [r for r in rows if r > 1]
    ns = {
        name: tuple(
            significant(
                max((times[r][name] - times[1][name]) / ((r - 1) * ELEMENTWISE_WIDTH) * 1e9, MIN_ELEMENT_NS),
                3,
            )
            for r in sizes
        )
        for name in ("norm", "rope", "add")
    }
    curve = ElementwiseBySize(elements=tuple(r * ELEMENTWISE_WIDTH for r in sizes), ns=ns)
    return {name: values[-1] for name, values in ns.items()}, curve


def _open_probe(spec: ModelSpec, directory: str, device: torch.device):
    from runtime.checkpoint.writer import write_random_checkpoint
    from runtime.engine import Engine, EngineConfig

    write_random_checkpoint(spec, directory)
    return Engine(
        directory,
        EngineConfig.build(
            num_seqs=EXPERT_PROBE_SEQS,
            attn_batch=EXPERT_PROBE_SEQS,
            kv_budget_bytes=8 << 20,
            prefill_chunk=PREFILL_PROMPTS * LONG_PROMPT,
            device=str(device),
            token_groups=1,
        ),
    )


def measure_overheads(
    device: torch.device,
    budget_s: float,
    elementwise_rows: int,
    repeats: int = 5,
    decode_tokens: int = 48,
    engine_runs: int = 2,
) -> Overheads:
    """The `overheads` section for `device`; `decode_tokens` per probe job, `engine_runs` jobs after a warm-up."""
    clock = _Clock(device, budget_s, repeats)
    with tempfile.TemporaryDirectory(prefix="moelens-overheads-") as directory:
        engine = _open_probe(PROBE_SPEC, f"{directory}/plain", device)
        qk_engine = _open_probe(
            replace(PROBE_SPEC, family="qwen3_moe", qk_norm="per_head"), f"{directory}/qk", device
        )
        mla_engine = _open_probe(MLA_PROBE_SPEC, f"{directory}/mla", device)
        try:
            with torch.inference_mode():
                calls = _engine_calls(engine, qk_engine, clock, decode_tokens, engine_runs)
                mla = _mla_calls(mla_engine, clock, decode_tokens, engine_runs)
                mla.update(_prefill_attention(mla_engine, clock, engine_runs))
                calls.update(_microbenchmarks(engine, clock))
                calls.update(_prefill_attention(engine, clock, engine_runs))
                elementwise, by_size = _elementwise_ns(device, elementwise_rows, clock)
                elementwise.update(
                    sampling_ns(device, clock, SAMPLING_ROWS, SAMPLING_VOCAB, floor_ns=MIN_ELEMENT_NS)
                )
        finally:
            engine.close()
            qk_engine.close()
            mla_engine.close()
    score_ns = calls.pop("attention_score") * 1e9
    mla_score_ns = mla.pop("attention_score") * 1e9
    return Overheads(
        call_s=CallOverheads(**{k: significant(max(v, 0.0), 3) for k, v in calls.items()}),
        mla_call_s={k: significant(max(v, 0.0), 3) for k, v in mla.items()},
        mla_attention_score_ns=significant(max(mla_score_ns, 0.0), 3),
        elementwise_ns=ElementwiseCosts(
            **{
                k: significant(max(v, 0.0), 3)
                for k, v in {**elementwise, "attention_score": score_ns}.items()
            },
            by_size=by_size,
        ),
    )


def median_overheads(rounds: list[Overheads]) -> Overheads:
    """Each cost's median over `rounds` measured at different minutes (`runtime profile` spreads them over
    its run), so one slow minute on a shared machine does not set the section."""
    if len(rounds) == 1:
        return rounds[0]

    def median(values) -> float:
        return significant(statistics.median(values), 3)

    calls = [r.call_s.to_dict() for r in rounds]
    first = rounds[0].elementwise_ns
    by_size = None
    if first.by_size is not None:
        by_size = ElementwiseBySize(
            elements=first.by_size.elements,
            ns={
                name: tuple(
                    median(r.elementwise_ns.by_size.ns[name][i] for r in rounds) for i in range(len(values))
                )
                for name, values in first.by_size.ns.items()
            },
        )
    mla = None
    if all(r.mla_call_s is not None for r in rounds):
        mla = {k: median(r.mla_call_s[k] for r in rounds) for k in rounds[0].mla_call_s}
    scores = [r.mla_attention_score_ns for r in rounds if r.mla_attention_score_ns is not None]
    return Overheads(
        call_s=CallOverheads(**{k: median(c[k] for c in calls) for k in calls[0]}),
        elementwise_ns=ElementwiseCosts(
            **{k: median(getattr(r.elementwise_ns, k) for r in rounds) for k in ELEMENTWISE_COSTS},
            by_size=by_size,
        ),
        mla_call_s=mla,
        mla_attention_score_ns=median(scores) if len(scores) == len(rounds) else None,
    )
