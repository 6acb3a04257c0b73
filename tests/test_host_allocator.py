import dataclasses
import platform
import sys

import pytest
import torch

from runtime.checkpoint import open_checkpoint, write_random_checkpoint
from runtime.engine import Engine, EngineConfig
from runtime.host_allocator import advise_huge_pages, empty_host, keep_temporaries_in_heap
from tests.test_engine import tiny_spec


def test_glibc_takes_both_thresholds_once_per_process():
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt is glibc's")
    assert keep_temporaries_in_heap() is True
    assert keep_temporaries_in_heap.cache_info().currsize == 1


def _advised(address: int) -> bool:
    """Whether the mapping holding `address` is advised for transparent huge pages (VmFlags `hg`)."""
    with open("/proc/self/smaps") as smaps:
        inside = False
        for line in smaps:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                lo, hi = (int(x, 16) for x in head.split("-"))
                inside = lo <= address < hi
            elif inside and head == "VmFlags:":
                return "hg" in line.split()[1:]
    raise AssertionError(f"no mapping holds {address:#x}")


linux_only = pytest.mark.skipif(sys.platform != "linux", reason="madvise and /proc/self/smaps are Linux's")


@linux_only
def test_empty_host_advises_its_whole_pages_and_not_small_tensors():
    big = empty_host((8 << 20,), torch.uint8)
    assert _advised(big.data_ptr() + (4 << 20))  # the middle page lies wholly inside
    assert not advise_huge_pages(torch.empty(1 << 20, dtype=torch.uint8))  # under one huge page: left alone


@linux_only
def test_engine_holds_upcast_weights_on_huge_pages(tmp_path):
    spec = dataclasses.replace(
        tiny_spec("mixtral"), hidden_size=512, moe_intermediate_size=1024, num_experts=8
    )  # an [8, 2048, 512] float32 gate-up stack: 32 MiB
    write_random_checkpoint(spec, tmp_path, dtype="bf16", seed=3)
    config = EngineConfig.build(
        num_seqs=2,
        attn_batch=2,
        expert_batch=4,
        kv_budget_bytes=1 << 22,
        kv_block_size=4,
        prefill_chunk=8,
        attention_threads=1,
        gemm_dtype="float32",
    )
    engine = Engine(open_checkpoint(tmp_path), config)
    try:
        stack = engine.store.layers[0]["moe.experts.0-8.gate_up"]
        assert stack.dtype == torch.float32
        assert _advised(stack.data_ptr() + stack.nbytes // 2)
    finally:
        engine.close()
