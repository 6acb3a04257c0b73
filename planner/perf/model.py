"""The performance model: time of every module, memory, and throughput as functions of the decision variables.

How it works: docs/design.md, `planner/perf/model.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np

from planner.errors import UserError
from planner.hardware.profile import HardwareProfile
from planner.modules import DECODE_MODULES, PREFILL_MODULES, micro_batches
from planner.perf.dequant import DequantTerms
from planner.perf.expert_kernels import grouped_by_default, grouped_calls
from planner.perf.gemm_dtype import narrow_on_wide_curves, plan_gemm_dtype
from planner.perf.layout import RESIDENCY_ORDER, ModelLayout
from planner.perf.memory import Budgets, MemoryModel
from planner.perf.merged import merged_prefill
from planner.perf.overheads import OverheadTerms
from planner.perf.rates import Rates, RateScale
from planner.perf.schedule import job_schedule
from planner.plans.workload import Workload
from planner.specs.spec import ModelSpec
from planner.units import KV_BLOCK_SIZE

STREAM_AHEAD = 2  # layers the streamer copies ahead of compute (its two slots)
BATCHING_MODES = ("module", "model")  # module-based batching (the engine's), or one batch size everywhere
SAMPLING_PASSES = 3  # logits read by softmax / top-p / argmax over the fp32 row (when the
# profile has no measured sampling cost per logit)


@dataclass(frozen=True)
class Candidates:
    residency: np.ndarray  # index into ModelLayout residency levels
    attn_batch: np.ndarray
    expert_batch: np.ndarray
    prefill_chunk: np.ndarray
    attention_threads: np.ndarray
    num_seqs: np.ndarray | None = None  # None: the largest N every memory budget allows

    @classmethod
    def of(cls, **values) -> Candidates:
        arrays = {k: (None if v is None else np.asarray(v, dtype=np.float64)) for k, v in values.items()}
        shape = np.broadcast_shapes(*(a.shape for a in arrays.values() if a is not None))
        return cls(**{k: (None if a is None else np.broadcast_to(a, shape)) for k, a in arrays.items()})


@dataclass(frozen=True)
class Evaluation:
    feasible: np.ndarray
    num_seqs: np.ndarray
    generated_tok_s: np.ndarray  # end to end, the objective
    decode_tok_s: np.ndarray
    prefill_tok_s: np.ndarray
    wall_time_s: np.ndarray
    decode_steps: np.ndarray
    decode_step_s: np.ndarray
    prefill_chunk_s: np.ndarray
    prefill_time_s: np.ndarray
    decode_modules: dict[str, np.ndarray]  # seconds per decode step (at N), per module
    prefill_modules: dict[str, np.ndarray]  # seconds per prefill chunk, per module
    busy: dict[str, np.ndarray]  # seconds per decode step each resource is busy


class PerfModel:
    def __init__(
        self,
        spec: ModelSpec,
        profile: HardwareProfile,
        workload: Workload,
        budgets: Budgets,
        scale: RateScale | None = None,
        block_size: int = KV_BLOCK_SIZE,
        stream_on_host: bool = False,
        batching: str = "module",
    ):
        if batching not in BATCHING_MODES:
            raise UserError(f"unknown batching {batching!r}", f"use one of {list(BATCHING_MODES)}")
        self.spec, self.profile, self.workload, self.budgets = spec, profile, workload, budgets
        self.layout = ModelLayout.build(spec, workload, block_size)
        self.has_device = profile.has_device
        self.emulated = profile.emulated_link is not None
        host_compute = not (self.has_device or self.emulated or stream_on_host)
        self.gemm_dtype = plan_gemm_dtype(spec, profile.gemm_dtype, host_compute)
        narrow = narrow_on_wide_curves(spec, profile.gemm_dtype, self.gemm_dtype)
        self.rates = Rates.build(profile, self.layout.costs, scale or RateScale(), narrow)
        self.overheads = OverheadTerms.build(
            spec, self.rates.overheads, workload.sampled_share, workload.top_p_share
        )
        self.dequant = DequantTerms.build(self.layout.costs, profile, self.rates)
        self.model_batching = batching == "model"
        self.batching = batching
        self.memory = MemoryModel(
            self.layout,
            workload,
            budgets,
            profile.has_device,
            emulated=self.emulated,
            kv_on_device=self.model_batching,
            gemm_dtype=self.gemm_dtype,
        )
        self.streams_on_host = stream_on_host and not self.has_device
        self.groups = 2 if self.has_device and not self.emulated else 1
        self.grouped_experts = grouped_by_default(self.gemm_dtype)  # the engine's expert path

    @property
    def residency_range(self) -> tuple[int, int]:
        """Residency indices the solver may choose: any with a device; with streaming on the host (the engine's
        forced-streaming mode) every layer group resident and the routed experts streamed; else everything."""
        top = self.layout.max_residency
        if self.emulated:  # the engine paces what the streamer copies: the routed experts
            return len(RESIDENCY_ORDER), top
        if self.has_device:
            return 0, top
        if self.streams_on_host:
            return len(RESIDENCY_ORDER), len(RESIDENCY_ORDER)
        return top, top

    @cached_property
    def whole_layers_fit(self) -> bool:
        """Whether some plan streams whole layers. Measured behind the emulated link, plans streaming experts
        in parts ran 7-60% below their prediction (their copies share the two cores with compute, whose
        small-batch GEMMs then run 2-4x slower than profiled), whole-layer plans within 10%: parts are
        planned only where no whole-layer plan fits. Model-based batching keeps them: they leave its KV cache
        the device room that bounds its batch."""
        smallest = Candidates.of(
            residency=self.residency_range[0],
            attn_batch=1,
            expert_batch=1,
            prefill_chunk=1,
            attention_threads=1,
        )
        return bool(
            np.all(self.memory.stream_parts(smallest) == 1) and np.all(self.memory.fixed_parts_fit(smallest))
        )

    def _copies(self, rho: np.ndarray, like: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Seconds to stream one MoE layer, one dense layer and the per-step modules at residency rho."""
        lay = self.layout
        if self.has_device:
            return tuple(
                self._copy_seconds(b[rho] + 0 * like)
                for b in (lay.streamed_moe_layer, lay.streamed_dense_layer, lay.streamed_per_step)
            )
        if not self.streams_on_host:
            return (np.zeros_like(like, dtype=np.float64),) * 3
        return tuple(
            (b[rho] + 0 * like) / self.rates.host_copy_bps
            for b in (lay.streamed_moe_layer, lay.streamed_dense_layer, lay.streamed_per_step)
        )

    def _weights_read(self, hit: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Weight bytes a MoE layer (with `hit` experts activated) and a dense layer read from host memory."""
        gb, lay = self.layout.group_bytes, self.layout
        moe = (
            gb["moe"]["qkv_proj"]
            + gb["moe"]["o_proj"]
            + gb["moe"]["router"]
            + hit * lay.expert_bytes
            + gb["moe"]["shared_experts"]
        )
        return moe, gb["dense"]["qkv_proj"] + gb["dense"]["o_proj"] + gb["dense"]["dense_mlp"]

    # ----- decode -----
    def decode_step(self, c: Candidates, num_seqs: np.ndarray) -> dict[str, np.ndarray]:
        lay, r, spec = self.layout, self.rates, self.spec
        g = r.gemm
        c = self.batched(c, num_seqs)
        rho = c.residency.astype(int)
        n = num_seqs / self.groups
        qkv = self.groups * g["qkv_proj"].chunked_seconds(n, c.attn_batch)
        o = self.groups * g["o_proj"].chunked_seconds(n, c.attn_batch)
        hit = lay.expected_experts(n)
        rows_per_expert = n * spec.top_k / np.maximum(hit, 1e-12)
        ov = self.overheads.decode_layer(
            num_seqs, self.groups, c.attn_batch, c.expert_batch, hit, rows_per_expert, self.grouped_experts
        )
        calls = micro_batches(num_seqs, self.groups, c.attn_batch)  # one kernel call per micro-batch
        dq = self.dequant.layer(calls, self.groups)
        qkv, o = qkv + ov["qkv_proj"] + dq["qkv_proj"], o + ov["o_proj"] + dq["o_proj"]
        router = self.groups * g["router"].seconds(n) + ov["router"] + ov["mlp_norm"]
        experts = self.groups * self._expert_seconds(hit, rows_per_expert, n, c.expert_batch) + ov["experts"]
        shared = self.groups * g["shared_experts"].chunked_seconds(n, c.expert_batch)
        shared = shared + ov["shared_experts"] + dq["shared_experts"]
        dense = (
            self.groups * g["dense_mlp"].chunked_seconds(n, c.expert_batch)
            + ov["dense_mlp"]
            + dq["dense_mlp"]
        )
        kv_read = num_seqs * lay.kv_read_bytes_per_seq_layer
        attention = (
            kv_read / r.attention_bps[c.attention_threads.astype(int)]
            + calls * r.call_overhead_s
            + ov["attention"]
        )
        dense_norm = ov["mlp_norm"]  # timed as `router` in dense layers too
        dev_moe = qkv + o + router + experts + shared + ov["residual"]
        dev_dense = qkv + o + dense + dense_norm + ov["residual"]
        copy_moe, copy_dense, step_copy = self._copies(rho, num_seqs)
        if self.emulated:
            act = (
                num_seqs
                * (lay.qkv_out_dim + lay.attn_out_dim)
                * spec.dtype_bytes
                / r.h2d_bps(np.maximum(num_seqs * lay.qkv_out_dim * spec.dtype_bytes, 1.0))
            )
            link_moe, link_dense = copy_moe + act, copy_dense + act
            read_moe, read_dense = self._weights_read(hit)
            host_moe = (kv_read + read_moe) / r.host_read_bps
            host_dense = (kv_read + read_dense) / r.host_read_bps
            cpu_moe = dev_moe + attention + self._copy_cpu_seconds(lay.streamed_moe_layer[rho])
            cpu_dense = dev_dense + attention + self._copy_cpu_seconds(lay.streamed_dense_layer[rho])
            stall = self._part_stall(link_moe, cpu_moe - experts, experts, self.memory.stream_parts(c))
            resources = {  # the link's entry: its copies and its waits for a free slot
                "moe": {"cpu": cpu_moe, "host_memory": host_moe, "link": link_moe + stall},
                "dense": {"cpu": cpu_dense, "host_memory": host_dense, "link": link_dense},
            }
            serial = {"moe": 0.0, "dense": 0.0}
            copy_moe, copy_dense = link_moe, link_dense
            device_bps = r.host_read_bps
        elif self.has_device:
            host_moe = (kv_read + lay.streamed_moe_layer[rho]) / r.host_read_bps
            host_dense = (kv_read + lay.streamed_dense_layer[rho]) / r.host_read_bps
            resources = {
                "moe": {"device": dev_moe, "cpu": attention, "link": copy_moe, "host_memory": host_moe},
                "dense": {
                    "device": dev_dense,
                    "cpu": attention,
                    "link": copy_dense,
                    "host_memory": host_dense,
                },
            }
            serial = {"moe": 0.0, "dense": 0.0}
            device_bps = r.device_read_bps
        else:
            read_moe, read_dense = self._weights_read(hit)
            host_moe = (kv_read + read_moe) / r.host_read_bps
            host_dense = (kv_read + read_dense) / r.host_read_bps
            resources = {
                "moe": {"cpu": dev_moe + attention, "host_memory": host_moe},
                "dense": {"cpu": dev_dense + attention, "host_memory": host_dense},
            }
            serial = {"moe": copy_moe, "dense": copy_dense}
            device_bps = r.host_read_bps
        layer_moe = np.maximum.reduce(list(resources["moe"].values())) + serial["moe"]
        layer_dense = np.maximum.reduce(list(resources["dense"].values())) + serial["dense"]
        per_step = self.overheads.decode_step(num_seqs)
        embed = num_seqs * spec.hidden_size * spec.dtype_bytes / device_bps + per_step["embed"]
        lm_head = self.groups * g["lm_head"].chunked_seconds(n, c.attn_batch) + per_step["lm_head"]
        logits = num_seqs * spec.vocab_size
        sampling = per_step["sampling"] + (
            0.0 if self.overheads.prices_sampling else logits * 4 * SAMPLING_PASSES / device_bps
        )
        serial = embed + lm_head + sampling + step_copy + r.step_overhead_s + per_step["step"]
        n_moe, n_dense, n_all = lay.num_moe_layers, lay.num_dense_layers, spec.num_layers
        step = n_moe * layer_moe + n_dense * layer_dense + serial
        if self.emulated:
            step = step - self._serial_under_link(resources, serial, self.memory.stream_parts(c))
        device_busy = n_moe * dev_moe + n_dense * dev_dense + embed + lm_head + sampling
        out = {
            "embed": embed,
            "qkv_proj": n_all * qkv,
            "attention": n_all * attention,
            "o_proj": n_all * o,
            "router": n_moe * router + n_dense * dense_norm,
            "experts": n_moe * experts,
            "shared_experts": n_moe * shared,
            "dense_mlp": n_dense * dense,
            "lm_head": lm_head,
            "weight_copy": n_moe * copy_moe + n_dense * copy_dense + step_copy,
            "sampling": sampling,
            "step": step,
            "busy_host_memory": n_moe * host_moe + n_dense * host_dense,
            "layer": {
                "resources": resources,
                "serial": serial,
                "group_tokens": n,
            },  # for `planner.perf.merged`
        }
        if self.emulated:
            out.update(busy_cpu=device_busy + n_all * attention, busy_link=out["weight_copy"])
        elif self.has_device:
            out.update(
                busy_device=device_busy, busy_cpu_attention=n_all * attention, busy_link=out["weight_copy"]
            )
        else:
            out.update(busy_cpu=device_busy + n_all * attention)
        return out

    def _part_stall(self, link, before, experts, parts) -> np.ndarray:
        """Emulated link, experts streamed in `parts`: seconds a layer's link waits for a free slot. The copy
        worker runs STREAM_AHEAD parts ahead, so while compute spends `before` (the layer's attention block)
        and one part's experts after the next part's arrival, the link idles once those outlast STREAM_AHEAD
        parts' copies. Zero for whole layers while the link binds (then before + 2 experts < 2 link)."""
        per_part = link / parts
        return np.maximum(before + 2 * experts / parts - STREAM_AHEAD * per_part, 0.0) * (parts > 1)

    def _serial_under_link(self, resources: dict, serial: np.ndarray, parts) -> np.ndarray:
        """Emulated link: seconds of the step's serial tail (embed, lm_head, sampling, bookkeeping) the link
        hides. Layers are released as compute leaves them, so the copy worker streams the next step's first
        layers into the free slots meanwhile: when a layer copies in x and computes in c < x, compute can fall
        behind by up to STREAM_AHEAD (x - c) before the link waits for a slot (STREAM_AHEAD parts of a layer
        when layers stream in `parts`)."""
        lay = self.layout
        layers = max(lay.num_moe_layers + lay.num_dense_layers, 1)

        def mean(name_of) -> np.ndarray:
            return (
                lay.num_moe_layers * name_of(resources["moe"])
                + lay.num_dense_layers * name_of(resources["dense"])
            ) / layers

        link = mean(lambda r: r["link"])
        compute = mean(lambda r: np.maximum(r["cpu"], r["host_memory"]))
        return np.minimum(serial, STREAM_AHEAD / parts * np.maximum(link - compute, 0.0))

    def _expert_seconds(self, hit, rows_per_expert, tokens, expert_batch) -> np.ndarray:
        """Seconds of one FFN call's routed experts on the engine's path (`planner.perf.expert_kernels`): their
        GEMMs and, for quantized experts, dequantizing them all (`planner.perf.dequant`)."""
        gemm, dequant = self.rates.gemm["experts"], self.dequant.expert_call_s
        if self.grouped_experts:
            return dequant + gemm.grouped_seconds(
                rows_per_expert, hit, grouped_calls(tokens * self.spec.top_k, expert_batch), expert_batch
            )
        return dequant + hit * gemm.chunked_seconds(rows_per_expert, expert_batch, padded=True)

    def _copy_seconds(self, nbytes: np.ndarray) -> np.ndarray:
        return np.where(nbytes > 0, nbytes / self.rates.h2d_bps(np.maximum(nbytes, 1.0)), 0.0)

    def _copy_cpu_seconds(self, nbytes: np.ndarray) -> np.ndarray:
        """Emulated link: the copy worker's memory-speed copy takes one of the cores from compute meanwhile."""
        return nbytes / self.rates.host_copy_bps / max(self.rates.cores, 1)

    def batched(self, c: Candidates, num_seqs) -> Candidates:
        """The decisions as the engine runs them: model-based batching has one batch of N everywhere."""
        if not self.model_batching:
            return c
        n = np.broadcast_to(np.maximum(num_seqs, 1.0), np.shape(c.attn_batch))
        tokens = np.maximum(self.prefill_tokens(c), n)
        return replace(c, attn_batch=n, expert_batch=tokens)

    # ----- prefill -----
    def prefill_tokens(self, c: Candidates, num_seqs: np.ndarray | None = None) -> np.ndarray:
        """Prompt tokens per prefill forward: the chunk, capped by the job and by the prompts that can be
        admitted at once: with N slots, a whole wave of N when sequences finish together, else the ~N/g that
        finish (and are refilled) per decode step."""
        w = self.workload
        tokens = np.minimum(c.prefill_chunk, max(w.prompt_tokens, 1.0))
        if num_seqs is None:
            return tokens
        admitted = num_seqs if w.finishes_in_waves else np.maximum(num_seqs / max(w.gen_len_mean, 1.0), 1.0)
        return np.minimum(tokens, np.maximum(admitted * w.prompt_len_mean, 1.0))

    def prefill_chunk(self, c: Candidates, num_seqs: np.ndarray | None = None) -> dict[str, np.ndarray]:
        lay, r, spec, w = self.layout, self.rates, self.spec, self.workload
        g = r.gemm
        if num_seqs is not None:
            c = self.batched(c, num_seqs)
        rho = c.residency.astype(int)
        tokens = self.prefill_tokens(c, num_seqs)
        sequences = np.maximum(tokens / w.prompt_len_mean, 1.0)
        hit = lay.expected_experts(tokens)
        rows_per_expert = tokens * spec.top_k / np.maximum(hit, 1e-12)
        ov = self.overheads.prefill_layer(
            tokens,
            sequences,
            2.0 * (w.prefill_context - 0.5),
            hit,
            rows_per_expert,
            c.expert_batch,
            self.grouped_experts,
        )
        dq = self.dequant.layer(1.0, 1.0)
        qkv = g["qkv_proj"].seconds(tokens) + ov["qkv_proj"] + dq["qkv_proj"]
        o = g["o_proj"].seconds(tokens) + ov["o_proj"] + dq["o_proj"]
        router = g["router"].seconds(tokens) + ov["router"] + ov["mlp_norm"]
        experts = self._expert_seconds(hit, rows_per_expert, tokens, c.expert_batch) + ov["experts"]
        shared = g["shared_experts"].chunked_seconds(tokens, c.expert_batch) + ov["shared_experts"]
        shared = shared + dq["shared_experts"]
        dense = g["dense_mlp"].chunked_seconds(tokens, c.expert_batch) + ov["dense_mlp"] + dq["dense_mlp"]
        attention = (
            tokens * w.prefill_context * lay.prefill_pair_flops / g["o_proj"].tables[-1].flops_per_s(tokens)
            + ov["attention"]
        )
        dense_norm = ov["mlp_norm"]
        dev_moe = qkv + o + router + experts + shared + attention + ov["residual"]
        dev_dense = qkv + o + dense + dense_norm + attention + ov["residual"]
        kv_bytes = tokens * lay.kv_bytes_per_token_layer
        copy_moe, copy_dense, step_copy = self._copies(rho, tokens)
        if self.emulated:
            kv_out = kv_bytes / r.d2h_bps(kv_bytes)
            read_moe, read_dense = self._weights_read(hit)
            copy_moe, copy_dense = copy_moe + kv_out, copy_dense + kv_out
            cpu_moe = dev_moe + self._copy_cpu_seconds(lay.streamed_moe_layer[rho])
            cpu_dense = dev_dense + self._copy_cpu_seconds(lay.streamed_dense_layer[rho])
            layer_moe = np.maximum.reduce([cpu_moe, (2 * kv_bytes + read_moe) / r.host_read_bps, copy_moe])
            layer_dense = np.maximum.reduce(
                [cpu_dense, (2 * kv_bytes + read_dense) / r.host_read_bps, copy_dense]
            )
            hide = {
                "moe": {
                    "link": copy_moe,
                    "cpu": cpu_moe,
                    "host_memory": (2 * kv_bytes + read_moe) / r.host_read_bps,
                },
                "dense": {
                    "link": copy_dense,
                    "cpu": cpu_dense,
                    "host_memory": (2 * kv_bytes + read_dense) / r.host_read_bps,
                },
            }
            kv_host = 2 * kv_bytes / r.host_read_bps  # riding a decode step: no weight copy or read again
            ride = {
                "moe": {"cpu": dev_moe, "host_memory": kv_host, "link": kv_out},
                "dense": {"cpu": dev_dense, "host_memory": kv_host, "link": kv_out},
            }
            device_bps = r.host_read_bps
        elif self.has_device:
            kv_out = kv_bytes / r.d2h_bps(kv_bytes)
            host_moe = (kv_bytes + lay.streamed_moe_layer[rho]) / r.host_read_bps
            host_dense = (kv_bytes + lay.streamed_dense_layer[rho]) / r.host_read_bps
            layer_moe = np.maximum.reduce([dev_moe, copy_moe, kv_out, host_moe])
            layer_dense = np.maximum.reduce([dev_dense, copy_dense, kv_out, host_dense])
            kv_host = kv_bytes / r.host_read_bps
            ride = {
                "moe": {"device": dev_moe, "d2h": kv_out, "host_memory": kv_host},
                "dense": {"device": dev_dense, "d2h": kv_out, "host_memory": kv_host},
            }
            device_bps = r.device_read_bps
        else:
            read_moe, read_dense = self._weights_read(hit)
            layer_moe = np.maximum(dev_moe, (2 * kv_bytes + read_moe) / r.host_read_bps) + copy_moe
            layer_dense = np.maximum(dev_dense, (2 * kv_bytes + read_dense) / r.host_read_bps) + copy_dense
            attn_bytes = {
                kind: lay.group_bytes[kind]["qkv_proj"] + lay.group_bytes[kind]["o_proj"]
                for kind in ("moe", "dense")
            }  # the FFN's weights are read once for both
            ride = {
                kind: {"cpu": dev, "host_memory": (2 * kv_bytes + attn_bytes[kind]) / r.host_read_bps}
                for kind, dev in (("moe", dev_moe), ("dense", dev_dense))
            }
            device_bps = r.host_read_bps
        per_chunk = self.overheads.prefill_chunk(tokens, sequences)
        embed = tokens * spec.hidden_size * spec.dtype_bytes / device_bps + per_chunk["embed"]
        # the engine samples the completed prompts' rows a micro-batch of attn_batch rows at a time
        lm_head = g["lm_head"].chunked_seconds(sequences, c.attn_batch) + per_chunk["lm_head"]
        n_moe, n_dense, n_all = lay.num_moe_layers, lay.num_dense_layers, spec.num_layers
        tail = embed + lm_head + step_copy + r.step_overhead_s + per_chunk["forward"]
        chunk = n_moe * layer_moe + n_dense * layer_dense + tail
        if self.emulated:
            chunk = chunk - self._serial_under_link(hide, tail, self.memory.stream_parts(c))
        return {
            "embed": embed,
            "qkv_proj": n_all * qkv,
            "attention": n_all * attention,
            "o_proj": n_all * o,
            "router": n_moe * router + n_dense * dense_norm,
            "experts": n_moe * experts,
            "shared_experts": n_moe * shared,
            "dense_mlp": n_dense * dense,
            "lm_head": lm_head,
            "weight_copy": n_moe * copy_moe + n_dense * copy_dense + step_copy,
            "chunk": chunk,
            "tokens": tokens,
            "alone": {"moe": layer_moe, "dense": layer_dense, "step": step_copy + r.step_overhead_s},
            "ride": ride,
            "hit": hit,
        }

    # ----- the whole job -----
    def throughput(self, c: Candidates) -> np.ndarray:
        """End-to-end generated tok/s of each candidate (0 where it does not fit): what the solver maximises."""
        return self._job(c)["generated"]

    def _job(self, c: Candidates) -> dict:
        """The job's time: N, its schedule's decode steps priced at the batches they run at, its prefill."""
        w = self.workload
        sized = self.batched(c, 1.0)  # model-based batching: prefill experts unchunked (N's share apart)
        n_max = self.memory.max_num_seqs(sized)
        num_seqs = np.floor(n_max) if c.num_seqs is None else np.asarray(c.num_seqs, dtype=np.float64)
        feasible = (num_seqs >= 1) & (num_seqs <= n_max + 1e-9) & self.memory.fixed_parts_fit(sized)
        if self.emulated and not self.model_batching and self.whole_layers_fit:
            feasible &= self.memory.stream_parts(sized) == 1
        n = np.clip(num_seqs, 1.0, float(w.num_prompts))
        sched = job_schedule(w, n, self.prefill_tokens(c, n))
        priced = [self.decode_step(c, batch) for batch, _ in sched.mix]
        decode_time = sum(count * at["step"] for at, (_, count) in zip(priced, sched.mix))
        # mix[0] decodes the most tokens: the steps most prefill chunks ride in
        pre = merged_prefill(self, c, self.prefill_chunk(c, n), priced[0], n, sched.riding_share)
        prefill_time = w.prompt_tokens / (pre["tokens"] / pre["chunk"])
        wall = prefill_time + decode_time
        generated = np.where(feasible, w.generated_tokens / wall, 0.0)
        return {
            "feasible": feasible,
            "n": n,
            "schedule": sched,
            "pre": pre,
            "prefill_time": prefill_time,
            "wall": wall,
            "generated": generated,
        }

    def evaluate(self, c: Candidates) -> Evaluation:
        """The job as `throughput` prices it, with the decode step at N and its modules (what a plan reports)."""
        job = self._job(c)
        n, pre, prefill_time, steps = job["n"], job["pre"], job["prefill_time"], job["schedule"].decode_steps
        at_n = self.decode_step(c, n)
        busy = {k.removeprefix("busy_"): v for k, v in at_n.items() if k.startswith("busy_")}
        decode_modules = {k: at_n[k] for k in DECODE_MODULES}
        decode_modules["prefill"] = prefill_time / np.maximum(steps, 1.0)
        return Evaluation(
            feasible=job["feasible"],
            num_seqs=n,
            generated_tok_s=job["generated"],
            decode_tok_s=n / at_n["step"],
            prefill_tok_s=pre["tokens"] / pre["chunk"],
            wall_time_s=job["wall"],
            decode_steps=steps,
            decode_step_s=at_n["step"],
            prefill_chunk_s=pre["chunk"],
            prefill_time_s=prefill_time,
            decode_modules=decode_modules,
            prefill_modules={k: pre[k] for k in PREFILL_MODULES},
            busy=busy,
        )
