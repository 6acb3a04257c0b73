import platform

import pytest

from runtime.host_allocator import keep_temporaries_in_heap


def test_glibc_takes_both_thresholds_once_per_process():
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt is glibc's")
    assert keep_temporaries_in_heap() is True
    assert keep_temporaries_in_heap.cache_info().currsize == 1
