"""Ray, the optional scale-out engine of trio-serve and trio-batch (`pip install 'trio-edge[ray]'`): importing it,
checking an --address, joining a cluster or starting a private local one.

Ray is imported only here and in the modules that run on it (serve.ray_app, batching.ray_engine), never by the core
install; every failure to reach a cluster is one typed error naming the fix, not a minute of retries.
"""

from __future__ import annotations

import os
import re
import socket

from .errors import BackendUnavailableError, InputError

RAY_INSTALL = "pip install 'trio-edge[ray]'"
REACH_TIMEOUT_S = 5.0  # a cluster address that does not accept a TCP connection within this is unreachable
ADDRESS = re.compile(r"(?P<client>ray://)?(?P<host>\[[^\]]+\]|[^:/\s]+):(?P<port>\d{1,5})")
ADDRESS_HELP = "auto (the cluster `ray start` started on this machine), ray://HOST:PORT (Ray Client) or HOST:PORT"


def import_ray(option: str = "--engine ray"):
    """The `ray` module, or BackendUnavailableError with the pip command that installs it."""
    try:
        import ray
    except ImportError:
        raise BackendUnavailableError(f"{option} needs Ray, which is not installed; install it with: "
                                      f"{RAY_INSTALL}") from None
    return ray


def check_address(address: str | None) -> None:
    """Refuse an --address that is malformed or, for HOST:PORT forms, does not accept a connection."""
    if address is None or address == "auto":
        return
    match = ADDRESS.fullmatch(address.strip())
    if match is None or not 0 < int(match["port"]) <= 65535:
        raise InputError(f"--address {address!r} is not a Ray cluster address; pass {ADDRESS_HELP}")
    host = match["host"].strip("[]")
    try:
        with socket.create_connection((host, int(match["port"])), timeout=REACH_TIMEOUT_S):
            pass
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise InputError(f"cannot reach the Ray cluster at --address {address} ({reason}); start one with "
                         "`ray start --head` there, or check the host and port") from None


def connect(address: str | None = None, *, num_cpus: int | None = None) -> bool:
    """Join the cluster at `address`, or (None) start a private local one that ends with this
    process. Returns whether this call started a cluster (the caller then owns its shutdown)."""
    ray = import_ray()
    if ray.is_initialized():
        return False
    check_address(address)
    quiet = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    try:
        if address is None:
            ray.init(num_cpus=num_cpus or os.cpu_count(), **quiet)
            return True
        ray.init(address=address.strip(), **{k: v for k, v in quiet.items() if k != "include_dashboard"})
    except ConnectionError as error:
        reason = str(error).splitlines()[0].rstrip(".")
        raise InputError(f"cannot join the Ray cluster at --address {address}: {reason}; start one with `ray start "
                         "--head`, or leave --address out for a private local cluster") from None
    return False


def cluster_cpus() -> float:
    """CPUs the connected cluster offers in all."""
    return float(import_ray().cluster_resources().get("CPU", 0))


def check_cpus(workers: int, cpus_each: float, what: str) -> None:
    """Refuse a request for more CPUs than the cluster has: Ray would wait for them forever."""
    available = cluster_cpus()
    if workers * cpus_each > available + 1e-9:
        raise InputError(f"{workers} {what} x {cpus_each:g} CPU need {workers * cpus_each:g} CPUs; the Ray cluster "
                         f"has {available:g}: ask for fewer, or a smaller --cpus-per-{what.rstrip('s')}")


def threads_for(cpus: float) -> int:
    """ONNX Runtime's intra-op threads for a worker's CPU share (Ray sets OMP_NUM_THREADS, which ORT ignores)."""
    return max(1, int(cpus))
