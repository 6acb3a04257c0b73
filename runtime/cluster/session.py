"""Connect to a Ray cluster for a job: `local` starts one on this machine, `auto` or an address joins one.

`ray_session(address, num_cpus=None)` is a context manager. It reuses a connection this process already has
(a test's or a notebook's), else calls `ray.init` and shuts it down on exit (which, for `local`, stops the
cluster it started). Workers get this process's PYTHONPATH and MOELENS_PROFILES_DIR so a local cluster runs
the same code and finds the same profiles; on a real cluster every node needs moelens installed and the
checkpoint at the same path.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from planner.errors import UserError

PASSED_ENV = ("PYTHONPATH", "MOELENS_PROFILES_DIR", "OMP_WAIT_POLICY")


def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise UserError(
            "--workers needs Ray Data, which is not installed",
            "install it: pip install 'ray[data]' (make install does)",
        ) from None
    return ray


@contextmanager
def ray_session(address: str, num_cpus: int | None = None) -> Iterator[object]:
    ray = _import_ray()
    if ray.is_initialized():
        yield ray
        return
    env = {name: os.environ[name] for name in PASSED_ENV if name in os.environ}
    kwargs = dict(log_to_driver=True, runtime_env={"env_vars": env}, logging_level="WARNING")
    try:
        if address == "local":
            ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, **kwargs)
        else:
            ray.init(address=address, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise UserError(
            f"cannot connect to the Ray cluster at {address!r}: {str(err).splitlines()[0]}",
            "start one (ray start --head) and pass its address (with RAY_AUTH_MODE=token set if the "
            "cluster uses token authentication), or use --ray-address local",
        ) from None
    try:
        yield ray
    finally:
        ray.shutdown()
