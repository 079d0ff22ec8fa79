"""Layer suite: forward + backward time per token of one square (d -> d) projection, for every kind and crossing.

Kinds: dense; svd and cola at r = d/4; tt with 4 cores (`tt_shape(d, d, d/4)`) in both contraction orders
(factor_first, sequential). Each low-rank kind without LaX and with the identity, kron and dense gates.
One unit of work is `jax.vjp` of the layer at N tokens, pulled back with a random cotangent: gradients of the
parameters, of the input and (crossed layers) of the incoming latent, as inside a network.

Every row carries the layer's analytic forward FLOPs per token (`make_linear(...).flops_per_token`, gate
included, latent norm and activation not counted) and, against the dense row of the same width,
    time_ratio = t_kind / t_dense,  flop_ratio = flops_kind / flops_dense,
    measured_over_predicted = time_ratio / flop_ratio   (1.0 = exactly as fast as its FLOPs predict).
The candidates of one width are timed side by side (`timing.time_interleaved`).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lax_pretrain.layers import KINDS, make_linear
from lax_pretrain.layers import crossings as registered_crossings
from lax_pretrain.layers.variants import variant_name
from lax_pretrain.machine import loadavg
from lax_pretrain.models.projections import dtype_of
from lax_pretrain.timing import on_accelerator, paired_ratio, time_interleaved

TT_ORDERS = ("factor_first", "sequential")
CPU_WIDTHS = (512, 1024, 2048)
ACCELERATOR_WIDTHS = (512, 1024, 2048, 4096)


@dataclasses.dataclass(frozen=True)
class LayerVariant:
    name: str  # e.g. 'dense', 'cola+kron', 'tt/sequential+identity'
    kind: str
    crossing: str
    tt_order: str | None
    spec: dict

    @property
    def base(self) -> str:
        """The same layer without LaX (the row a crossing's overhead is measured against)."""
        return self.name.split("+")[0]

    @property
    def kron_impl(self) -> str | None:
        return self.spec.get("kron_impl")


def default_widths() -> tuple[int, ...]:
    return ACCELERATOR_WIDTHS if on_accelerator() else CPU_WIDTHS


def layer_spec(
    kind: str, d: int, *, crossing: str = "none", tt_order: str | None = None, rank: int | None = None
) -> dict[str, Any]:
    """The spec of a square d -> d projection of `kind` at rank d/4 (or `rank`): what the registered kind sets
    for a preset's rank (svd/cola rank, the TT latent bond of the default 4-core shape)."""
    r = rank if rank is not None else max(d // 4, 1)
    entry = KINDS.get(kind, key="kind")
    spec = {"kind": kind, **entry.overrides(r, "layer")}
    if entry.has_latent:
        spec["crossing"] = crossing
    if "tt_order" in entry.fields:
        spec["tt_order"] = tt_order or "factor_first"
    return spec


def layer_variants(
    d: int,
    *,
    crossings: tuple[str, ...] | None = None,
    kinds: tuple[str, ...] | None = None,
    tt_orders: tuple[str, ...] = TT_ORDERS,
    kron_impls: tuple[str, ...] = ("auto",),
) -> list[LayerVariant]:
    """Every kind x TT order x crossing; a kron crossing once per `kron_impls` entry ('cola+kron[gemm]'), unless
    that is just ('auto',)."""
    out = []
    for kind in kinds or KINDS.names():  # default: every registered kind and gate
        entry = KINDS.get(kind, key="kind")
        if not entry.has_latent:
            out.append(LayerVariant(kind, kind, "none", None, layer_spec(kind, d)))
            continue
        orders = tt_orders if "tt_order" in entry.fields else (None,)
        for order in orders:
            stem = f"{kind}/{order}" if order else kind
            for crossing in crossings or registered_crossings():
                spec = layer_spec(kind, d, crossing=crossing, tt_order=order)
                if crossing != "kron" or tuple(kron_impls) == ("auto",):
                    out.append(LayerVariant(variant_name(stem, crossing), kind, crossing, order, spec))
                    continue
                for impl in kron_impls:
                    out.append(
                        LayerVariant(
                            variant_name(stem, crossing, kron_impl=impl),
                            kind,
                            crossing,
                            order,
                            {**spec, "kron_impl": impl},
                        )
                    )
    return out


def build_layer(d: int, variant: LayerVariant, *, dtype: str = "float32", seed: int = 0):
    return make_linear(
        d,
        d,
        variant.spec,
        rngs=nnx.Rngs(seed),
        axes=("embed", "mlp"),
        dtype=dtype_of(dtype, "dtype"),
        name=f"bench.{variant.name}",
    )


def fwd_bwd(layer) -> tuple[Any, Any]:
    """(jitted f(state, x, latent_in, dy) -> grads of (state, x, latent_in), state) for one layer."""
    graphdef, state = nnx.split(layer)

    def forward(state, x, latent_in):
        y, _ = nnx.merge(graphdef, state)(x, latent_in)
        return y

    def step(state, x, latent_in, dy):
        y, pullback = jax.vjp(forward, state, x, latent_in)
        return pullback(dy.astype(y.dtype))

    return jax.jit(step), state


def _inputs(d: int, latent: int | None, tokens: int, dtype: str, seed: int):
    rng = np.random.default_rng(seed)
    dt = dtype_of(dtype, "dtype")
    x = jnp.asarray(rng.standard_normal((tokens, d), np.float32), dt)
    dy = jnp.asarray(rng.standard_normal((tokens, d), np.float32), dt)
    lat = None if latent is None else jnp.asarray(rng.standard_normal((tokens, latent), np.float32), dt)
    return x, lat, dy


def run_layers(
    *,
    widths: tuple[int, ...] | None = None,
    tokens: int = 1024,
    repeats: int = 5,
    warmup: int = 1,
    min_sample_s: float = 0.05,
    dtype: str = "float32",
    crossings: tuple[str, ...] | None = None,
    kinds: tuple[str, ...] | None = None,
    tt_orders: tuple[str, ...] = TT_ORDERS,
    kron_impls: tuple[str, ...] = ("auto",),
    seed: int = 0,
    log=print,
) -> dict[str, Any]:
    """Runs the suite; returns the JSON-ready result {'suite', 'settings', 'rows', 'load'}."""
    widths = tuple(widths or default_widths())
    kinds, crossings = tuple(kinds or KINDS.names()), tuple(crossings or registered_crossings())
    rows: list[dict[str, Any]] = []
    load_before = loadavg()
    for d in widths:
        variants = layer_variants(
            d, crossings=crossings, kinds=kinds, tt_orders=tt_orders, kron_impls=kron_impls
        )
        fns, meta = {}, {}
        for v in variants:
            layer = build_layer(d, v, dtype=dtype, seed=seed)
            latent = layer.spec.latent_dim if layer.spec.crossed else None
            x, lat, dy = _inputs(d, latent, tokens, dtype, seed)
            fn, state = fwd_bwd(layer)
            t0 = time.perf_counter()
            compiled = fn.lower(state, x, lat, dy).compile()
            compile_s = time.perf_counter() - t0
            fns[v.name] = lambda c=compiled, s=state, x=x, lat=lat, dy=dy: c(s, x, lat, dy)
            meta[v.name] = dict(variant=v, layer=layer, compile_s=compile_s)
        log(f"[layers] d={d}: {len(fns)} variants compiled, timing {repeats} rounds of {tokens} tokens")
        stats = time_interleaved(fns, repeats=repeats, warmup=warmup, min_sample_s=min_sample_s)
        dense_name = "dense" if "dense" in stats else None
        for name, st in stats.items():
            v, layer = meta[name]["variant"], meta[name]["layer"]
            flops = int(layer.flops_per_token)
            row = {
                "width": d,
                "name": name,
                "kind": v.kind,
                "crossing": v.crossing,
                "tt_order": v.tt_order,
                "kron_impl": layer.gate.impl if v.crossing == "kron" else None,
                "latent_dim": layer.spec.latent_dim,
                "params": int(layer.param_count),
                "flops_per_token": flops,
                "train_flops_per_token": 3 * flops,
                "tokens": tokens,
                "time_per_token_s": st.median / tokens,
                "time_per_call": st.to_json(),
                "gflops_per_s": 3 * flops * tokens / st.median / 1e9,
                "compile_s": meta[name]["compile_s"],
            }
            rows.append(row)
        by_name = {r["name"]: r for r in rows if r["width"] == d}
        for r in by_name.values():
            if dense_name is not None:
                dense = by_name[dense_name]
                r["time_ratio_vs_dense"] = r["time_per_token_s"] / dense["time_per_token_s"]
                r["flop_ratio_vs_dense"] = r["flops_per_token"] / dense["flops_per_token"]
                r["measured_over_predicted"] = r["time_ratio_vs_dense"] / r["flop_ratio_vs_dense"]
            base = by_name.get(r["name"].split("+")[0])
            if r["crossing"] != "none" and base is not None:
                r["lax_overhead"] = r["time_per_token_s"] / base["time_per_token_s"] - 1.0
                r["lax_overhead_paired"] = paired_ratio(stats[r["name"]], stats[base["name"]]) - 1.0
        done = ", ".join(f"{n} {r['time_per_token_s'] * 1e9:.1f}ns" for n, r in by_name.items())
        log(f"[layers] d={d} done: {done}")
    return {
        "suite": "layers",
        "settings": dict(
            widths=list(widths),
            tokens=tokens,
            repeats=repeats,
            warmup=warmup,
            min_sample_s=min_sample_s,
            dtype=dtype,
            crossings=list(crossings),
            kinds=list(kinds),
            tt_orders=list(tt_orders),
            kron_impls=list(kron_impls),
            rank_rule="r = d/4 (svd, cola); tt_shape(d, d, d/4) (tt)",
            unit="forward+backward (jax.vjp) of one d->d projection, grads of params, input and "
            "incoming latent",
        ),
        "load": {"before": load_before, "after": loadavg()},
        "rows": rows,
    }
