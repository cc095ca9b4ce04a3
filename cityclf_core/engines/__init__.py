"""Engines that run the dataset jobs (embed, score) somewhere other than this one process.

    local      cityclf_core.dataset: threads decode, this process runs CLIP, writes the store
    ray        ray_data.py: Ray Data over a local Ray or a cluster; results as Parquet shards
               (parquet.py) imported into the same store; ray_cluster.py: joining the cluster,
               sizing the CLIP workers, their failures as one line

Every engine calls the same primitives (decoding, crop plans, views, the encoder,
the heads) and fills the same store, so what comes out does not depend on it.
"""

from __future__ import annotations

from ..errors import ConfigError

ENGINES = ("local", "ray")

RAY_EXTRA_HINT = ('install it from a checkout of cityclf (it is not published on PyPI): pip install -e ".[ray]", '
                  "or run with --engine local")


def require_ray():
    """The `ray` module, or a ConfigError saying how to get it (the CLI exits 2 on it)."""
    try:
        import ray
        import ray.data  # noqa: F401  (the extra brings Ray Data's dependencies too)
    except ImportError as e:
        raise ConfigError(f"--engine ray needs Ray Data, which is not installed here ({e}); "
                          f"{RAY_EXTRA_HINT}") from None
    return ray


__all__ = ["ENGINES", "RAY_EXTRA_HINT", "require_ray"]
