"""Adam in a low-rank subspace of each projected gradient, as GaLore, Fira and APOLLO's authors compute it: one
optax transformation, the methods differing only in their projector and in how the full-size update direction
is made from the low-rank Adam step (`Method.direction`).

Per step t (1-based) with the scheduled learning rate lr_t, as in the authors' AdamW:
    refresh the projector P where the 0-based step % update_proj_gap == 0 (`jax.lax.cond`: no SVD otherwise)
    R = project(G, P);  m = b1 m + (1 - b1) R;  v = b2 v + (1 - b2) R^2;  N = m / (sqrt(v) + eps)
    D = direction(G, R, N, P)                       (plain parameters: D = N of the full gradient)
    p <- p - lr_t sqrt(1 - b2^t) / (1 - b1^t) D;  then p <- p (1 - lr_t wd) on the updated p (decoupled decay)
optax's adamw puts eps inside the bias correction and decays the pre-step parameter; `optax.contrib.galore`
also projects the other side of every matrix: neither is the authors' update.

The state is a `LowRankAdamState` of arrays only (orbax saves and restores it exactly, the step counter that
decides refreshes included); its trees have the parameters' structure, with a float32 scalar placeholder where
a field does not apply to a parameter (a plain parameter's projector and limiter norm).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lax_pretrain.optim.base import own_section
from lax_pretrain.optim.decay import decay_mask, path_names
from lax_pretrain.optim.projection import LeafPlan, plan_leaf, project, random_projector, svd_projector


class LowRankAdamState(NamedTuple):
    count: jax.Array  # int32 (): steps taken; the projectors are refreshed where count % update_proj_gap == 0
    mu: Any  # first moments: (..., r, d_out) / (..., d_in, r) for projected parameters, full for the rest
    nu: Any  # second moments, shaped as mu
    projector: Any  # (..., k, r) per projected parameter (k: the side it projects); placeholder otherwise
    norm: Any  # the norm-growth limiter's last norm per matrix (the leading axes); placeholder otherwise


@dataclasses.dataclass(frozen=True)
class Step:
    """What a method's direction sees for one projected parameter."""

    g: jax.Array  # the full gradient (..., d_in, d_out)
    r: jax.Array  # its projection
    n: jax.Array  # the low-rank Adam step m / (sqrt(v) + eps)
    projector: jax.Array
    plan: LeafPlan
    norm: jax.Array  # the limiter's last norm
    first: jax.Array  # bool (): the first step (the limiter only records)
    scale: float  # the method's scale (GaLore's scale, Fira's alpha, APOLLO's scale)


# Step -> (the full-size direction D, the limiter's new norm).
DirectionFn = Callable[[Step], tuple[jax.Array, jax.Array]]


@dataclasses.dataclass(frozen=True)
class Method:
    """projection: 'svd' (GaLore, Fira: r = min(rank, d_in, d_out)) or 'random' (APOLLO: r = rank)."""

    projection: str
    rank: int
    update_proj_gap: int
    scale: float
    direction: DirectionFn
    seed: int = 0  # the random projections' key (APOLLO)

    def plan(self, names, shape) -> LeafPlan | None:
        return plan_leaf(names, shape, self.rank, clip_rank=self.projection == "svd")


def placeholder() -> jax.Array:
    return jnp.zeros((), jnp.float32)


def _plans(method: Method, tree: Any) -> list[LeafPlan | None]:
    return [
        method.plan(path_names(path), x.shape) for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]
    ]


def low_rank_adamw(
    method: Method,
    learning_rate: optax.Schedule,
    *,
    b1: float,
    b2: float,
    eps: float,
    weight_decay: float,
    mask: Callable[[Any], Any] | None = None,
) -> optax.GradientTransformation:
    """The authors' AdamW with `method`'s projected parameters; `mask(params)`: True where decayed (None: all)."""

    def init(params):
        leaves, treedef = jax.tree.flatten(params)
        plans = _plans(method, params)

        def moment(x, plan):
            return jnp.zeros(plan.low_rank_shape(x.shape) if plan else x.shape, x.dtype)

        def projector(x, plan):
            return jnp.zeros(plan.projector_shape(x.shape), x.dtype) if plan else placeholder()

        def norm(x, plan):
            return jnp.zeros(x.shape[:-2], jnp.float32) if plan else placeholder()

        fields = [[fn(x, plan) for x, plan in zip(leaves, plans)] for fn in (moment, moment, projector, norm)]
        return LowRankAdamState(jnp.zeros((), jnp.int32), *(jax.tree.unflatten(treedef, f) for f in fields))

    def update(grads, state, params=None):
        if params is None:
            raise ValueError("low_rank_adamw needs the parameters (decoupled weight decay of the updated p)")
        count = state.count
        refresh, first = count % method.update_proj_gap == 0, count == 0
        t = (count + 1).astype(jnp.float32)
        lr = learning_rate(count)
        # 1 - b^t as -expm1(t log1p(-(1 - b))): the float32 power would lose ~5 digits of 1 - b2^t at small t
        # (the authors compute it in float64).
        bias1, bias2 = (-jnp.expm1(t * jnp.log1p(-(1.0 - b))) for b in (b1, b2))
        step_size = lr * jnp.sqrt(bias2) / bias1
        decayed = jax.tree.leaves(mask(params)) if mask is not None else None
        leaves, treedef = jax.tree.flatten(grads)
        plans = _plans(method, grads)
        projectors = _refreshed(leaves, plans, jax.tree.leaves(state.projector), refresh, count)
        fields = zip(
            leaves,
            jax.tree.leaves(params),
            *(jax.tree.leaves(x) for x in (state.mu, state.nu, state.norm)),
            projectors,
            plans,
        )
        out = []
        for index, (g, p, mu, nu, norm, proj, plan) in enumerate(fields):
            if plan is None:
                mu, nu = b1 * mu + (1.0 - b1) * g, b2 * nu + (1.0 - b2) * g * g
                direction = mu / (jnp.sqrt(nu) + eps)
            else:
                r = project(g, proj, plan.left)
                mu, nu = b1 * mu + (1.0 - b1) * r, b2 * nu + (1.0 - b2) * r * r
                n = mu / (jnp.sqrt(nu) + eps)
                direction, norm = method.direction(Step(g, r, n, proj, plan, norm, first, method.scale))
            u = -step_size * direction
            if weight_decay > 0 and (decayed is None or decayed[index]):
                u = u - lr * weight_decay * (p + u)
            out.append((u.astype(p.dtype), mu, nu, proj, norm))
        updates, mu, nu, proj, norm = (jax.tree.unflatten(treedef, list(f)) for f in zip(*out))
        return updates, LowRankAdamState(optax.safe_int32_increment(count), mu, nu, proj, norm)

    def _refreshed(leaves, plans, projectors, refresh, count):
        """Every projector, recomputed where `refresh`: one `lax.cond` for the whole step, so an ordinary step
        runs no SVD and no random draw."""
        index = [i for i, plan in enumerate(plans) if plan is not None]

        def fresh():
            return [_new_projector(leaves[i], plans[i], i, count) for i in index]

        new = jax.lax.cond(refresh, fresh, lambda: [projectors[i] for i in index])
        out = list(projectors)
        for i, p in zip(index, new):
            out[i] = p
        return out

    def _new_projector(g, plan, index, count):
        if method.projection == "svd":
            return svd_projector(g, plan)
        # A fresh random projection per parameter and per refresh, from the method's seed.
        key = jax.random.fold_in(jax.random.fold_in(jax.random.key(method.seed), index), count)
        return random_projector(key, g, plan)

    return optax.GradientTransformation(init, update)


def state_shardings(tx: optax.GradientTransformation, params: Any, mesh: Mesh) -> Any:
    """The state laid out like the parameters it belongs to: full moments as their parameter; projectors on the
    parameter's mesh axes of the side they project, replicated on the rank axis; low-rank moments on the mesh
    axes of the side they keep, or, where that side is not sharded (FSDP shards only one axis of a kernel), the
    rank axis takes the projected side's mesh axes when they divide it (else the moments would be whole on
    every device: lax-plan measured GaLore's state at 60m over fsdp=8 at 1.4x AdamW's before); limiter norms
    on the leading (layer) axes; step counts and placeholders replicated."""
    replicated = NamedSharding(mesh, PartitionSpec())
    abstract = jax.eval_shape(tx.init, params)
    param_specs = [_spec(p) for p in jax.tree.leaves(params)]

    def lay_out(node):
        if not isinstance(node, LowRankAdamState):
            return jax.tree.map(lambda _: replicated, node)
        treedef = jax.tree.structure(node.mu)
        plans = [
            _plan_of(p, proj) for p, proj in zip(jax.tree.leaves(params), jax.tree.leaves(node.projector))
        ]
        specs = {field: [] for field in ("mu", "projector", "norm")}
        for spec, plan in zip(param_specs, plans):
            if plan is None:
                specs["mu"].append(spec)
                specs["projector"].append(PartitionSpec())
                specs["norm"].append(PartitionSpec())
                continue
            *lead, a, b = spec
            kept, projected = (b, a) if plan.left else (a, b)
            rank_axes = projected if kept is None and plan.rank % _ways(mesh, projected) == 0 else None
            specs["mu"].append(
                PartitionSpec(*lead, rank_axes, b) if plan.left else PartitionSpec(*lead, a, rank_axes)
            )
            specs["projector"].append(PartitionSpec(*lead, a if plan.left else b, None))
            specs["norm"].append(PartitionSpec(*lead))
        named = {
            k: jax.tree.unflatten(treedef, [NamedSharding(mesh, s) for s in v]) for k, v in specs.items()
        }
        return LowRankAdamState(replicated, named["mu"], named["mu"], named["projector"], named["norm"])

    return jax.tree.map(lay_out, abstract, is_leaf=lambda x: isinstance(x, LowRankAdamState))


def _ways(mesh: Mesh, axes) -> int:
    """How many shards a spec entry (None, a mesh axis name or a tuple of them) makes."""
    names = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
    return math.prod(mesh.shape[n] for n in names)


def _spec(param) -> PartitionSpec:
    """The parameter's partition spec padded to its rank."""
    spec = tuple(param.sharding.spec) if isinstance(param.sharding, NamedSharding) else ()
    return PartitionSpec(*spec, *(None,) * (len(param.shape) - len(spec)))


def _plan_of(param, projector) -> LeafPlan | None:
    """The plan that built a parameter's state: plain where its projector is the scalar placeholder; the side
    follows from the parameter's shape (projection.plan_leaf)."""
    if projector.ndim == 0:
        return None
    return LeafPlan(left=param.shape[-2] <= param.shape[-1], rank=projector.shape[-1])


def build_entry(name: str, make_method: Callable[[dict], Method]):
    """An `Optimizer.build` for a low-rank method registered as `name`: betas, weight decay and its mask from the
    shared `optim` keys; rank, gap, scale and eps from `optim.<name>` (the authors' eps default is 1e-6, not
    the shared optim.eps of optax's AdamW)."""

    def build(optim_cfg: Any, schedule: optax.Schedule) -> optax.GradientTransformation:
        own = own_section(optim_cfg, name)
        return low_rank_adamw(
            make_method(own),
            schedule,
            b1=optim_cfg.b1,
            b2=optim_cfg.b2,
            eps=own["eps"],
            weight_decay=optim_cfg.weight_decay,
            mask=decay_mask(optim_cfg.weight_decay_mask),
        )

    return build


def validate_entry(name: str, choices: dict[str, tuple[str, ...]] | None = None):
    """Checks of `optim.<name>`: a positive integer rank and gap, a positive scale, eps >= 0, and the listed
    choices; one line naming the key."""

    def validate(optim_cfg: Any) -> None:
        own = own_section(optim_cfg, name)
        for key in ("rank", "update_proj_gap"):
            if not isinstance(own[key], int) or isinstance(own[key], bool) or own[key] < 1:
                raise ValueError(f"optim.{name}.{key}={own[key]!r} must be an integer >= 1")
        if not own["scale"] > 0:
            raise ValueError(f"optim.{name}.scale={own['scale']!r} must be > 0")
        if not own["eps"] >= 0:
            raise ValueError(f"optim.{name}.eps={own['eps']!r} must be >= 0")
        for key, allowed in (choices or {}).items():
            if own[key] not in allowed:
                raise ValueError(f"optim.{name}.{key}={own[key]!r} is not one of {', '.join(allowed)}")

    return validate
