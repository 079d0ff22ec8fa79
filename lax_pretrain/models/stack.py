"""A depth stack of blocks that threads LaX latents: block 0 peeled off, blocks 1..L-1 unrolled or scanned.

Block 0 is built with crossing 'none' (no gate or latent-norm parameters) and starts the latents; every
later block receives the latents of the block before it, projection by projection. Under `scan_layers`
the blocks 1..L-1 are one stacked module run by `nnx.scan` with (x, latents) in the carry, which keeps
compile time flat at 24+ layers. Remat wraps each block: 'full' saves nothing inside a block; 'cola_m'
(CoLA-M) saves only the latents and the residual stream, recomputing everything wider.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from lax_pretrain.layers import LATENT_NAME

RESIDUAL_NAME = "residual"
REMAT_CHOICES = ("none", "full", "cola_m")


def tag_residual(x: jax.Array) -> jax.Array:
    """Marks the residual stream inside a block so the CoLA-M policy keeps it."""
    return checkpoint_name(x, RESIDUAL_NAME)


def remat_policy(remat: str):
    if remat == "full":
        return jax.checkpoint_policies.nothing_saveable
    if remat == "cola_m":
        return jax.checkpoint_policies.save_only_these_names(LATENT_NAME, RESIDUAL_NAME)
    raise ValueError(f"model.remat={remat!r} is not one of {', '.join(REMAT_CHOICES)}")


def _apply_block(block: nnx.Module, x: jax.Array, latents: Any, *args: Any) -> tuple[jax.Array, Any]:
    return block(x, latents, *args)


class BlockStack(nnx.Module):
    """`make_block(first: bool, rngs) -> block` where `block(x, latents, *args) -> (x, latents)`."""

    def __init__(
        self,
        make_block: Callable[[bool, nnx.Rngs], nnx.Module],
        num_layers: int,
        *,
        scan: bool,
        remat: str,
        rngs: nnx.Rngs,
    ):
        if remat not in REMAT_CHOICES:
            raise ValueError(f"model.remat={remat!r} is not one of {', '.join(REMAT_CHOICES)}")
        self.num_layers, self.scan, self.remat = num_layers, scan, remat
        self.first = make_block(True, rngs)
        rest = num_layers - 1
        if scan and rest > 0:

            @nnx.split_rngs(splits=rest)
            @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
            def make_stacked(r: nnx.Rngs) -> nnx.Module:
                return make_block(False, r)

            self.rest = make_stacked(rngs)
        else:
            self.rest = nnx.List([make_block(False, rngs) for _ in range(rest)])

    def __call__(self, x: jax.Array, *args: Any) -> jax.Array:
        apply = _apply_block
        if self.remat != "none":
            apply = nnx.remat(_apply_block, policy=remat_policy(self.remat), prevent_cse=not self.scan)
        x, latents = apply(self.first, x, None, *args)
        if self.num_layers == 1:
            return x
        if self.scan:

            @nnx.scan(in_axes=(nnx.Carry, 0) + (None,) * len(args), out_axes=nnx.Carry)
            def run(carry, block, *a):
                return apply(block, *carry, *a)

            x, _ = run((x, latents), self.rest, *args)
            return x
        for block in self.rest:
            x, latents = apply(block, x, latents, *args)
        return x

    def init_cache(self, make_one: Callable[[], Any]) -> dict:
        """A per-layer cache for `decode`: {'first': make_one(), 'rest': a list (unrolled) or one pytree with
        a leading layer axis of L-1 (scanned)}."""
        rest = [make_one() for _ in range(self.num_layers - 1)]
        if self.scan and rest:
            rest = jax.tree.map(lambda *xs: jax.numpy.stack(xs), *rest)
        return {"first": make_one(), "rest": rest}

    @staticmethod
    def cache_length(cache: dict) -> int:
        """The number of slots S of a cache (axis 1 of the first block's arrays)."""
        return jax.tree.leaves(cache["first"])[0].shape[1]

    def decode(self, x: jax.Array, cache: dict, *args: Any) -> tuple[jax.Array, dict]:
        """Like `__call__`, with state: `block.decode(x, latents, cache_l, *args) -> (x, latents, cache_l)`.
        No remat (inference); scanned stacks scan their caches along the layer axis."""
        x, latents, first = self.first.decode(x, None, cache["first"], *args)
        if self.num_layers == 1:
            return x, {"first": first, "rest": cache["rest"]}
        if self.scan:

            @nnx.scan(in_axes=(nnx.Carry, 0, 0) + (None,) * len(args), out_axes=(nnx.Carry, 0))
            def run(carry, block, c, *a):
                y, lat, c = block.decode(*carry, c, *a)
                return (y, lat), c

            (x, _), rest = run((x, latents), self.rest, cache["rest"], *args)
            return x, {"first": first, "rest": rest}
        rest = []
        for block, c in zip(self.rest, cache["rest"], strict=True):
            x, latents, c = block.decode(x, latents, c, *args)
            rest.append(c)
        return x, {"first": first, "rest": rest}
