"""The solver: the throughput-optimal decisions for one model, machine, workload and set of budgets.

How it works: docs/design.md, `planner/plans/solver.py`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from scipy.optimize import differential_evolution

from planner.errors import UserError
from planner.perf.model import Candidates, PerfModel
from planner.units import GiB

ATTN_BATCHES = 2.0 ** np.arange(0, 17)  # 1 .. 65536 sequences
EXPERT_BATCHES_LOG2 = (0, 16)  # b_e = 1 .. 65536 tokens
PREFILL_CHUNKS = 2.0 ** np.arange(7, 18)  # 128 .. 131072 tokens
ATTENTION_SATURATION = 0.995
SEED = 0
COARSE_RESIDENCIES = 33  # the second start's lattice (the local search refines it)
COARSE_STARTS = 4  # its best points the local search starts from

PLATEAU = 1e-3  # emulated link: throughputs this close are one plateau (largest batches win)


@dataclass(frozen=True)
class Solution:
    residency: int
    attn_batch: int
    expert_batch: int
    prefill_chunk: int
    attention_threads: int
    compute_threads: int
    num_seqs: int
    generated_tok_s: float
    evaluations: int
    solve_seconds: float

    def candidates(self) -> Candidates:
        return Candidates.of(
            residency=[self.residency],
            attn_batch=[self.attn_batch],
            expert_batch=[self.expert_batch],
            prefill_chunk=[self.prefill_chunk],
            attention_threads=[self.attention_threads],
            num_seqs=[self.num_seqs],
        )


def choose_threads(model: PerfModel) -> tuple[int, int]:
    """(attention threads, compute threads)."""
    cores = model.rates.cores
    if model.groups == 1 or cores == 1:  # compute and attention share the cores (CPU, emulated link)
        return cores, cores
    bps = model.rates.attention_bps[1:cores]  # leave one core for the driver thread
    attention = int(np.argmax(bps >= ATTENTION_SATURATION * bps.max())) + 1
    return attention, cores - attention


class Solver:
    def __init__(self, model: PerfModel):
        self.model = model
        self.attention_threads, self.compute_threads = choose_threads(model)
        self.min_residency, self.max_residency = model.residency_range
        self.evaluations = 0
        self._cache: dict[tuple[int, int], tuple[float, int, int]] = {}

    # ----- objective -----
    def _inner(
        self, residency: np.ndarray, expert_log2: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Best generated tok/s over (b_a, chunk) for each (residency, b_e); also the argmax indices."""
        k = residency.size
        c = Candidates.of(
            residency=residency.reshape(k, 1, 1),
            expert_batch=(2.0**expert_log2).reshape(k, 1, 1),
            attn_batch=ATTN_BATCHES.reshape(1, -1, 1),
            prefill_chunk=PREFILL_CHUNKS.reshape(1, 1, -1),
            attention_threads=self.attention_threads,
        )
        value = self.model.throughput(c).reshape(k, -1)
        self.evaluations += value.size
        best = np.argmax(value, axis=1)
        if self.model.emulated:  # on a plateau (compute hidden under the link) the largest batches: least
            near = value >= value[np.arange(k), best][:, None] * (
                1 - PLATEAU
            )  # compute, most margin on shared cores
            best = value.shape[1] - 1 - np.argmax(near[:, ::-1], axis=1)
        a_idx, c_idx = np.unravel_index(best, (ATTN_BATCHES.size, PREFILL_CHUNKS.size))
        return value[np.arange(k), best], a_idx, c_idx

    def _values(self, points: list[tuple[int, int]]) -> list[float]:
        todo = sorted({p for p in points if p not in self._cache})
        if todo:
            rho = np.array([p[0] for p in todo], dtype=np.float64)
            e = np.array([p[1] for p in todo], dtype=np.float64)
            values, a_idx, c_idx = self._inner(rho, e)
            for point, v, a, ch in zip(todo, values, a_idx, c_idx):
                self._cache[point] = (float(v), int(a), int(ch))
        return [self._cache[p][0] for p in points]

    def _clip(self, rho: float, e: float) -> tuple[int, int]:
        lo, hi = EXPERT_BATCHES_LOG2
        return int(np.clip(round(rho), 0, self.max_residency)), int(np.clip(round(e), lo, hi))

    # ----- search -----
    def solve(self) -> Solution:
        began = time.perf_counter()
        rho_lo = self.min_residency
        bounds = [
            (rho_lo, self.max_residency + 0.999),
            (EXPERT_BATCHES_LOG2[0], EXPERT_BATCHES_LOG2[1] + 0.999),
        ]

        def objective(x: np.ndarray) -> np.ndarray:  # x: [2, population]
            points = [
                self._clip(np.floor(r), np.floor(e)) for r, e in zip(np.atleast_1d(x[0]), np.atleast_1d(x[1]))
            ]
            return -np.array(self._values(points))

        if rho_lo < self.max_residency:
            result = differential_evolution(
                objective,
                bounds,
                seed=SEED,
                popsize=8,
                maxiter=40,
                tol=1e-6,
                polish=False,
                updating="deferred",
                vectorized=True,
            )
            start = self._clip(np.floor(result.x[0]), np.floor(result.x[1]))
        else:
            values = self._values(
                [(rho_lo, e) for e in range(EXPERT_BATCHES_LOG2[0], EXPERT_BATCHES_LOG2[1] + 1)]
            )
            start = (rho_lo, EXPERT_BATCHES_LOG2[0] + int(np.argmax(values)))
        ends = {self._local_search(p, rho_lo) for p in sorted({start, *self._coarse_best(rho_lo)})}
        best = self._smallest_equivalent(max(sorted(ends), key=lambda p: self._values([p])[0]), rho_lo)
        value, a_idx, c_idx = self._cache[best]
        if value <= 0:
            raise UserError(
                "no configuration fits the memory budgets",
                "raise --kv-gb, --host-gb or --device-gb, or use a smaller model",
            )
        rho, e = best
        c = Candidates.of(
            residency=[rho],
            attn_batch=[ATTN_BATCHES[a_idx]],
            expert_batch=[2.0**e],
            prefill_chunk=[PREFILL_CHUNKS[c_idx]],
            attention_threads=[self.attention_threads],
        )
        num_seqs = int(self.model.evaluate(c).num_seqs[0])
        return Solution(
            residency=rho,
            attn_batch=int(ATTN_BATCHES[a_idx]),
            expert_batch=int(2**e),
            prefill_chunk=int(PREFILL_CHUNKS[c_idx]),
            attention_threads=self.attention_threads,
            compute_threads=self.compute_threads,
            num_seqs=num_seqs,
            generated_tok_s=value,
            evaluations=self.evaluations,
            solve_seconds=time.perf_counter() - began,
        )

    def _coarse_best(self, rho_lo: int) -> list[tuple[int, int]]:
        """The best COARSE_STARTS points of a coarse lattice (COARSE_RESIDENCIES residencies, every b_e): more
        starts for the local search where the evolution settles on another basin (N's whole waves make the
        landscape bumpy: `planner.perf.schedule`)."""
        rhos = np.unique(np.linspace(rho_lo, self.max_residency, COARSE_RESIDENCIES).round().astype(int))
        lo, hi = EXPERT_BATCHES_LOG2
        points = [(int(r), e) for r in rhos for e in range(lo, hi + 1)]
        values = self._values(points)
        return [points[i] for i in np.argsort(values)[::-1][:COARSE_STARTS]]

    def _local_search(self, start: tuple[int, int], rho_lo: int) -> tuple[int, int]:
        best = start
        best_value = self._values([best])[0]
        steps = [1 << i for i in range(int(np.log2(max(self.max_residency, 1))) + 1)]
        while True:
            rho, e = best
            neighbours = {
                self._clip(rho + sign * s, e + de) for s in steps for sign in (-1, 1) for de in (-1, 0, 1)
            }
            neighbours |= {self._clip(rho, e + de) for de in (-1, 1)}
            neighbours = sorted(p for p in neighbours if p[0] >= rho_lo and p != best)
            values = self._values(neighbours)
            i = int(np.argmax(values)) if values else 0
            if not values or values[i] <= best_value * (1 + 1e-12):
                return best
            best, best_value = neighbours[i], values[i]

    def _smallest_equivalent(self, best: tuple[int, int], rho_lo: int) -> tuple[int, int]:
        """Among points as good as `best` (to 1e-9), the least residency, then the smallest b_e: the same
        throughput for less device memory, and one answer however the search reached the plateau."""
        target = self._values([best])[0] * (1 - 1e-9)
        rho, e = best
        while rho > rho_lo and self._values([(rho - 1, e)])[0] >= target:
            rho -= 1
        if self.model.emulated:  # the largest b_e instead: the cap is fixed, the cores are shared
            while e < EXPERT_BATCHES_LOG2[1] and self._values([(rho, e + 1)])[0] >= target:
                e += 1
            return rho, e
        while e > EXPERT_BATCHES_LOG2[0] and self._values([(rho, e - 1)])[0] >= target:
            e -= 1
        return rho, e


def solve(model: PerfModel) -> Solution:
    check_budgets(model)
    return Solver(model).solve()


def check_budgets(model: PerfModel) -> None:
    """Name the budget that rules out every plan, before searching."""
    mem, lay, b, w = model.memory, model.layout, model.budgets, model.workload
    # the fewest weight bytes the host must keep: with a device, all but the most that fits there
    lowest = Candidates.of(
        residency=np.arange(lay.max_residency + 1),
        attn_batch=1,
        expert_batch=1,
        prefill_chunk=PREFILL_CHUNKS[0],
        attention_threads=1,
    )
    fits = mem.fixed_parts_fit(lowest)
    host_weights = float(mem.host_weights(lowest)[fits].min()) if fits.any() else lay.total_bytes
    if host_weights + mem.host_reserve > b.host_bytes:
        raise UserError(
            f"the weights of {model.spec.name} kept on the host ({host_weights / GiB:.1f} GiB) plus a "
            f"{mem.host_reserve / GiB:.1f} GiB reserve exceed host memory ({b.host_bytes / GiB:.1f} GiB)",
            "use a machine with more memory, pass --host-gb if the profile understates it, or plan "
            "a smaller dtype (--dtype fp8)",
        )
    if lay.kv_bytes_one_sequence > b.kv_bytes:
        raise UserError(
            f"a KV budget of {b.kv_bytes / GiB:.2f} GiB cannot hold one sequence of "
            f"{w.max_sequence_len} tokens ({lay.kv_bytes_one_sequence / GiB:.2f} GiB)",
            f"raise --kv-gb to at least {lay.kv_bytes_one_sequence / GiB:.2f} or shorten the sequences",
        )
    host_left = b.host_bytes - host_weights - mem.host_reserve
    if lay.kv_bytes_one_sequence > host_left:
        raise UserError(
            f"after the weights and reserve, host memory has {host_left / GiB:.2f} GiB left, less than "
            f"one sequence's KV ({lay.kv_bytes_one_sequence / GiB:.2f} GiB)",
            "use a machine with more memory or shorter sequences",
        )
    if model.has_device:
        rho = model.residency_range[0]
        smallest = Candidates.of(
            residency=rho, attn_batch=1, expert_batch=1, prefill_chunk=PREFILL_CHUNKS[0], attention_threads=1
        )
        need = float(
            mem.device_fixed(smallest) + np.maximum(mem.transients(smallest), mem.prefill_workspace(smallest))
        )
        kv = lay.kv_bytes_one_sequence + lay.kv_bytes_per_slot if mem.kv_on_device else 0.0
        if need + kv > b.device_bytes:
            resident = f"{lay.resident_bytes[rho] / GiB:.2f} GiB of resident weights, " if rho else ""
            words = "the emulated device" if model.emulated else "device memory"
            parts = int(mem.stream_parts(smallest))
            unit = "layers" if parts == 1 else f"parts (each layer's experts in {parts})"
            raise UserError(
                f"{words} ({b.device_bytes / GiB:.2f} GiB) cannot hold {resident}two {unit} of stream "
                f"buffers ({float(mem.stream_buffers(smallest)) / GiB:.2f} GiB), the smallest activations"
                + (f", one sequence's KV cache ({kv / GiB:.2f} GiB)" if kv else "")
                + (f" and a {mem.device_reserve / GiB:.1f} GiB reserve" if mem.device_reserve else "")
                + f": {(need + kv) / GiB:.2f} GiB in all",
                "give it more device memory (--emulate-device-gb when profiling, or --device-gb)"
                if model.emulated
                else "use a device with more memory or a CPU-only profile",
            )


def grid_search(model: PerfModel) -> tuple[float, tuple[int, int, int, int]]:
    """Exhaustive search over the whole lattice: (best tok/s, (residency, b_a, b_e, chunk))."""
    attention_threads, _ = choose_threads(model)
    rho_lo, rho_hi = model.residency_range
    best = (-1.0, (0, 0, 0, 0))
    expert_batches = 2.0 ** np.arange(EXPERT_BATCHES_LOG2[0], EXPERT_BATCHES_LOG2[1] + 1)
    for rho in range(rho_lo, rho_hi + 1):
        c = Candidates.of(
            residency=rho,
            attn_batch=ATTN_BATCHES.reshape(-1, 1, 1),
            expert_batch=expert_batches.reshape(1, -1, 1),
            prefill_chunk=PREFILL_CHUNKS.reshape(1, 1, -1),
            attention_threads=attention_threads,
        )
        value = model.throughput(c)
        i = np.unravel_index(int(np.argmax(value)), value.shape)
        if value[i] > best[0]:
            best = (
                float(value[i]),
                (rho, int(ATTN_BATCHES[i[0]]), int(expert_batches[i[1]]), int(PREFILL_CHUNKS[i[2]])),
            )
    return best
