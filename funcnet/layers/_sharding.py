"""Arrays a layer makes itself (masks, gathered rows, initial carries), laid out like the layer's input.

On a mesh with Explicit axes (``jax.make_mesh``'s default) every array carries its sharding in its type,
and operations refuse operands that disagree: a dropout mask drawn replicated cannot select against a
batch sharded along ``"data"``, and a zero carry cannot enter a scan whose outputs are sharded. These
helpers give such arrays the sharding of the input they go with. Elsewhere (one device, Auto axes,
``shard_map``, ``vmap``) they change nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P


def sharding_like(like: jax.Array, shape: Sequence[int], axes: int | None = None) -> NamedSharding | None:
    """The sharding of a new array of ``shape`` whose first ``axes`` axes (default: all of ``like``'s) are
    ``like``'s: ``like``'s spec there (unsharded where the sizes differ, e.g. broadcast axes of size 1),
    unsharded elsewhere. None unless ``like`` lives on a mesh with Explicit axes.

    >>> import jax.numpy as jnp
    >>> sharding_like(jnp.ones((4, 3)), (4, 1)) is None  # no mesh: JAX chooses
    True
    """
    sharding = jax.typeof(like).sharding
    mesh = getattr(sharding, "mesh", None)
    if not isinstance(sharding, NamedSharding) or AxisType.Explicit not in getattr(mesh, "axis_types", ()):
        return None
    axes = like.ndim if axes is None else axes
    spec = tuple(sharding.spec) + (None,) * (like.ndim - len(sharding.spec))
    return NamedSharding(mesh, P(*(spec[i] if i < axes and n == like.shape[i] else None for i, n in enumerate(shape))))


def reshard_like(tree: Any, like: jax.Array, axes: int) -> Any:
    """``tree``'s arrays resharded to share ``like``'s first ``axes`` axes (see ``sharding_like``).

    >>> import jax.numpy as jnp
    >>> reshard_like({"h": jnp.zeros((2, 3))}, jnp.ones((2, 5, 4)), axes=1)["h"].shape
    (2, 3)
    """
    if sharding_like(like, like.shape) is None:
        return tree
    return jax.tree.map(lambda a: jax.sharding.reshard(a, sharding_like(like, a.shape, axes)), tree)
