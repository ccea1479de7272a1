"""A CPU pipeline keeps freed host memory (runtime.host_memory): repeated requests stop page-faulting their
activations. Each case runs in its own process, since the setting is process-wide."""

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from trio_edge.runtime.host_memory import OPT_OUT_ENV

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")

# Eight "requests" of two MLP layers over 3,000 positions (activations of 12 and 37 MB, the larger one above
# glibc's largest mmap threshold, 32 MiB: below it glibc's sliding threshold can start serving the block from the
# heap after a few requests, so the default would stop faulting too); prints each request's minor page faults.
REQUESTS = """
import resource, sys, torch
from trio_edge.runtime.host_memory import host_memory_kept, keep_freed_host_memory
if sys.argv[1] == "keep":
    assert keep_freed_host_memory() and host_memory_kept()
w1, w2 = torch.randn(1024, 3072), torch.randn(3072, 1024)
def request():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    h = torch.randn(3000, 1024)
    for _ in range(2):
        h = h + torch.relu(h @ w1) @ w2
    del h
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(" ".join(str(request()) for _ in range(8)))
"""


def page_faults(mode: str) -> list[int]:
    env = {k: v for k, v in os.environ.items() if k != OPT_OUT_ENV}
    done = subprocess.run([sys.executable, "-c", REQUESTS, mode], capture_output=True, text=True, timeout=120,
                          env=env)
    assert done.returncode == 0, done.stderr
    return [int(n) for n in done.stdout.split()]


def huge_pages_always() -> bool:
    """Transparent huge pages for every mapping: a fault then brings in 2 MiB, so page-fault counts say little."""
    try:
        return "[always]" in Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return False


def test_kept_memory_stops_the_page_faults_of_repeated_requests():
    kept, default = page_faults("keep"), page_faults("default")
    # the blocks of earlier requests are reused: once the heap has settled a request faults nothing (on a loaded
    # machine torch's threads can take a few requests to settle: [28456, 8063, 8062, 8063, 0] seen)
    assert min(kept[1:]) <= 100, kept
    if huge_pages_always():
        pytest.skip("transparent huge pages are 'always' here: the default's faults are 2 MiB each, too few to count")
    # glibc's default maps every 37 MB block afresh and hands it back on free: each request faults its ~9k pages
    assert min(default[2:]) > 5_000, default


def test_a_cpu_pipeline_keeps_freed_memory_unless_low_memory_or_opted_out(one_cut_dir):
    script = ("import sys; from trio_edge import load; from trio_edge.runtime.host_memory import host_memory_kept; "
              "p = load(sys.argv[1], low_memory=sys.argv[2] == 'low'); print(host_memory_kept())")
    for mode, opt_out, expected in (("low", None, "False"), ("default", "0", "False"), ("default", None, "True")):
        env = {k: v for k, v in os.environ.items() if k != OPT_OUT_ENV}
        if opt_out is not None:
            env[OPT_OUT_ENV] = opt_out
        done = subprocess.run([sys.executable, "-c", script, str(one_cut_dir), mode], capture_output=True, text=True,
                              timeout=300, env=env)
        assert done.returncode == 0, done.stderr
        assert done.stdout.split()[-1] == expected, (mode, opt_out, done.stdout)


RELEASE = """
import ctypes, sys
from trio_edge.runtime.host_memory import release_freed_host_memory
def resident():
    return int(open("/proc/self/statm").read().split()[1]) * 4096
blocks = [ctypes.create_string_buffer(64 << 10) for _ in range(4096)]  # 256 MiB of heap blocks, every page touched
keep = blocks[::64]  # a few live blocks spread over the heap: the top cannot simply be trimmed
del blocks
before = resident()
assert release_freed_host_memory()
print(before - resident())
"""


def test_releasing_freed_host_memory_returns_the_heap_fragments():
    """What low-memory runs call after closing a graph: free pages in the middle of the heap go back too."""
    done = subprocess.run([sys.executable, "-c", RELEASE], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.split()[-1]) > 128 << 20
