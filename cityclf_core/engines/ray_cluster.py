"""The Ray cluster a job runs on: joining it, sizing the CLIP workers, and its failures as one clear line.

    connect        join --address (or $RAY_ADDRESS, or start a local Ray): an address is tried with a plain
                   TCP connection first (a few seconds), so a wrong one fails before Ray waits minutes on it;
                   an authentication refusal says so
    actor_pool     (min, max) CLIP workers and the GPUs and CPUs each asks for: elastic, sized by what the
                   cluster can place (its node types included, so GPU nodes with min_workers: 0 count; CPU
                   workers without a MAX grow onto CPU nodes that join), never every CPU of a CPU-only
                   cluster (decoding keeps at least one)
    worker_errors  in a worker: any failure becomes a ClusterError naming the node (out of memory, no CUDA,
                   a CLIP that differs from the driver's)
    cluster_error  on the driver: the error a failed Ray run raised, as the one-line CityClfError inside it
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import socket
from dataclasses import dataclass
from typing import Iterator

from .. import errors
from ..errors import CityClfError, ConfigError

#: how long an --address may take to answer a TCP connection, and then to answer as a Ray cluster (seconds)
PROBE_TIMEOUT = 5.0
JOIN_TIMEOUT = 8


class ClusterError(CityClfError):
    """A Ray node or worker that cannot do its part (the message names the node and what to do)."""


# ---------------------------------------------------------------- joining


def address_of(address: str | None) -> str | None:
    """The address a job joins: --address, else $RAY_ADDRESS, else None (a new local Ray)."""
    return address or os.environ.get("RAY_ADDRESS") or None


def probe(address: str) -> None:
    """ConfigError unless something answers a TCP connection at `address` (HOST:PORT, ray://HOST:PORT) within
    PROBE_TIMEOUT seconds; `auto` and `local` are Ray's own to resolve (on this machine)."""
    if address in ("auto", "local"):
        return
    hostport = re.sub(r"^[a-z]+://", "", address)
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--address {address}: expected HOST:PORT (e.g. 10.0.0.5:6379), ray://HOST:10001, or auto")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=PROBE_TIMEOUT):
            pass
    except OSError as e:
        why = "no answer" if isinstance(e, socket.timeout) else (e.strerror or str(e))
        raise ConfigError(f"--address {address}: cannot reach a Ray cluster there ({why} within "
                          f"{PROBE_TIMEOUT:g} s); check the host and port (the head node's `ray start --head` "
                          "prints them), or leave --address out for a local Ray") from None


def _is_auth(e: BaseException) -> bool:
    for x in _chain(e):
        if type(x).__name__ == "AuthenticationError" or re.search(r"unauthenticated|auth(entication)? ?token",
                                                                   str(x), re.I):
            return True
    return False


def connect(address: str | None) -> bool:
    """Join the Ray at `address` (or $RAY_ADDRESS, or start a local one); False if this process already had one.
    Workers' log lines are not copied to this terminal (Ray keeps them in its session logs)."""
    import ray

    address = address_of(address)
    if address:
        probe(address)
    if ray.is_initialized():
        return False
    # this process's core worker logs an ERROR line about Ray Data's actor constructor arguments on every run
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    if address:  # something answers there: give it seconds, not Ray's default of minutes, to answer as Ray
        os.environ.setdefault("RAY_gcs_server_port_wait_time_s", str(JOIN_TIMEOUT))
    try:
        ray.init(address=address, include_dashboard=False, logging_level="WARNING", configure_logging=True,
                 log_to_driver=False)
    except Exception as e:  # noqa: BLE001  (ConnectionError, RuntimeError, AuthenticationError...)
        if _is_auth(e):
            raise ConfigError(f"--address {address}: the Ray cluster refused this client's authentication; it "
                              "wants Ray's auth token: set RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) to the "
                              "cluster's token (`ray get-auth-token` on the head node) and RAY_AUTH_MODE=token"
                              ) from None
        if not isinstance(e, (ConnectionError, RuntimeError)):
            raise
        where = f"--address {address}" if address else "a local Ray"
        raise ConfigError(f"{where}: cannot reach a Ray cluster there ({e}); start one with `ray start --head` "
                          "or `ray up cluster.yaml`, or leave --address out for a local Ray") from None
    return True


@contextlib.contextmanager
def session(address: str | None) -> Iterator[None]:
    """Joined to the cluster for the block (left again at its end if this call joined it)."""
    started = connect(address)
    try:
        yield
    finally:
        if started:
            import ray

            ray.shutdown()


# ---------------------------------------------------------------- sizing the CLIP workers


@dataclass(frozen=True)
class Pool:
    min_size: int
    max_size: int | None  # None: as many as the cluster can place (Ray Data grows the pool as nodes join)
    gpus: float  # per worker (0: CPU workers)
    cpus: float  # per worker
    note: str | None = None  # for the user: why the pool is smaller than asked, or what it waits for


def node_types() -> dict[str, float]:
    """The most of each resource the autoscaler's node types can bring ({} without an autoscaler)."""
    try:  # a private API of Ray's
        from ray._private.state import state

        return {k: float(v) for k, v in (state.get_max_resources_from_cluster_config() or {}).items()}
    except Exception:  # noqa: BLE001
        return {}


def _most(ray) -> dict[str, float]:
    """The most of each resource the cluster has now or can grow to."""
    most = {k: float(v) for k, v in ray.cluster_resources().items()}
    for k, v in node_types().items():
        most[k] = max(most.get(k, 0.0), v)
    return most


def cluster_cpus(ray) -> float:
    """The CPUs of the cluster, now or once its autoscaler has started every node it may."""
    return _most(ray).get("CPU", 1.0)


def actor_pool(ray, workers: int | tuple[int, int | None] | None, gpus_per_worker: float | None) -> Pool:
    """The CLIP workers: `workers` N (exactly N), (MIN, MAX) or (MIN, None) (MAX: as many as fit), None: (1,
    as many as fit). GPU workers when told (--num-gpus-per-worker G > 0) or when the cluster has or can start
    GPU nodes; the GPUs are asked of Ray, not checked against what is present now (an autoscaler starts the
    nodes; the note says when none is there now). CPU workers on a CPU-only cluster leave decoding at least one CPU:
    a MAX is cut to the CPUs there are less one; without a MAX the pool grows as CPU nodes join (Ray Data reserves
    resources for each stage, so the CLIP workers never take the decoding tasks' last CPU), and a MIN is cut to
    what fits now."""
    lo, hi = (1, None) if workers is None else (workers, workers) if isinstance(workers, int) else workers
    if lo < 1 or (hi is not None and hi < lo):
        raise ConfigError(f"--workers {lo}:{hi}: need at least one CLIP worker, and MIN at most MAX")
    if gpus_per_worker is not None and gpus_per_worker < 0:
        raise ConfigError("--num-gpus-per-worker must be 0 (CPU workers) or more")
    most = _most(ray)
    if gpus_per_worker is None:
        gpus_per_worker = 1.0 if most.get("GPU", 0) > 0 else 0.0
    if gpus_per_worker > 0:
        note = None
        if most.get("GPU", 0) < gpus_per_worker:  # asked of Ray all the same: an autoscaler may start them
            note = (f"--num-gpus-per-worker {gpus_per_worker:g}: no node of this Ray cluster has that many GPUs "
                    f"now ({most.get('GPU', 0):g} in all); the CLIP workers wait for an autoscaler to start GPU "
                    "nodes (Ctrl-C to stop; --num-gpus-per-worker 0 for CPU workers)")
        return Pool(lo, hi, gpus_per_worker, 1.0, note)
    cpus = most.get("CPU", 1.0)
    if cpus < 2:  # one CPU in all: the worker shares it with decoding
        return Pool(1, 1, 0.0, 0.0, f"the Ray cluster has {cpus:g} CPU" if (hi or 1) > 1 else None)
    room = int(cpus) - 1  # one CPU, at least, for decoding
    if hi is None:  # grows as nodes join; Ray Data's reservation for the decoding stage keeps it a CPU
        note = None if lo <= room else f"--workers {lo}: asks for at least {lo} CPU workers; the Ray cluster has " \
            f"{cpus:g} CPUs, one kept for decoding: {room} to start with, more as nodes join"
        return Pool(min(lo, room), None, 0.0, 1.0, note)
    note = None
    if hi > room:
        note = f"--workers {lo}:{hi} asks for {hi} CPU workers; the Ray cluster has {cpus:g} CPUs, one " \
               f"kept for decoding: {min(lo, room)}:{room}"
        hi = room
    return Pool(min(lo, room), hi, 0.0, 1.0, note)


# ---------------------------------------------------------------- failures


def node_name() -> str:
    """This machine as a Ray node: host name and IP address."""
    host = socket.gethostname()
    try:
        import ray

        ip = ray.util.get_node_ip_address()
    except Exception:  # noqa: BLE001
        return host
    return f"{host} ({ip})"


def _out_of_memory(e: BaseException) -> bool:
    return isinstance(e, MemoryError) or "out of memory" in str(e).lower() or type(e).__name__ == "OutOfMemoryError"


def worker_errors(fn):
    """Decorate a worker's method: every failure leaves it as a ClusterError naming this node."""
    @functools.wraps(fn)
    def call(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ClusterError:
            raise
        except Exception as e:  # noqa: BLE001
            node = node_name()
            if _out_of_memory(e):
                raise ClusterError(f"Ray node {node}: the CLIP worker ran out of memory ({_first_line(e)}); lower "
                                   "--batch-size, or give each worker more (--num-gpus-per-worker)") from None
            if isinstance(e, CityClfError):
                raise ClusterError(f"Ray node {node}: {_first_line(e)}") from None
            raise ClusterError(f"Ray node {node}: the CLIP worker failed: {type(e).__name__}: {_first_line(e)}; "
                               "check that this node has the same cityclf, torch and models as the driver's"
                               ) from None
    return call


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _chain(e: BaseException) -> Iterator[BaseException]:
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = getattr(e, "cause", None) if isinstance(getattr(e, "cause", None), BaseException) else (
            e.__cause__ or e.__context__)


#: how a CityClfError raised in a worker reads in the text of the Ray error that carries it
_CARRIED = re.compile(r"cityclf_core\.(?:errors|engines\.ray_cluster)\.(\w+): (.+)$", re.M)


def cluster_error(e: BaseException) -> CityClfError | None:
    """The one-line error a failed Ray run stands for: a CityClfError raised in a worker (or Ray's text of
    it, when its actor died of it), a worker killed for memory, a lost node; None when it is none of these."""
    for x in _chain(e):
        if isinstance(x, CityClfError) and not isinstance(getattr(x, "cause", None), BaseException):
            return type(x)(_first_line(x)) if type(x) in _KINDS else ClusterError(_first_line(x))
    for x in _chain(e):
        found = _CARRIED.findall(str(x))
        if found:
            kind, message = found[-1]
            return _KINDS.get(kind, ClusterError)(message.strip())
    for x in _chain(e):
        missing = re.search(r"No module named '([\w.]+)'", str(x))
        if missing:
            return ClusterError(f"a Ray worker cannot import {missing.group(1)}: install cityclf (with the same "
                                "extras) in the Python that Ray runs on every node")
        name = type(x).__name__
        if name == "OutOfMemoryError":
            return ClusterError(f"Ray killed a worker for memory ({_first_line(x)}); lower --batch-size or "
                                "--workers, or use nodes with more memory; a rerun resumes")
        if name in ("ActorDiedError", "NodeDiedError", "WorkerCrashedError", "ObjectLostError", "RayActorError",
                    "ActorUnavailableError"):
            return ClusterError(f"a Ray worker or node was lost ({_first_line(x)}); what was stored is kept: "
                                "run the same command again to resume")
    return None


_KINDS = {c.__name__: c for c in (ClusterError, *(getattr(errors, n) for n in dir(errors)))
          if isinstance(c, type) and issubclass(c, CityClfError)}


__all__ = ["ClusterError", "Pool", "actor_pool", "address_of", "cluster_cpus", "cluster_error", "connect",
           "node_name", "probe", "session", "worker_errors"]
