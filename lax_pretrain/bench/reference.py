"""Minimal re-implementations of one LLaMA train step: the yardsticks of the `reference` suite.

  plain JAX  the same model as plain functions over a dict of arrays: every projection is `x @ W` (dense) or
             `act(x @ A) @ B` (cola, svd without the act), the same loss and the same optimizer
             (`optim.make_optimizer`); no NNX, no factory, no sharding or remat hooks. Our step over
             this one is what our abstractions cost.
  PyTorch    the same model and step in eager PyTorch (CPU): `F.scaled_dot_product_attention`,
             `torch.optim.AdamW` and `clip_grad_norm_`. Our step over this one is what XLA:CPU gives away (or
             gains) against another framework on the same machine.

Both start from one of our models' parameters (`plain_params`), so tests/test_bench.py checks that they compute
our loss and gradients (float32 tolerance) before anything is timed. The models are ours without LaX (a
crossed model has no plain counterpart) and unrolled (`scan_layers=False`), in float32.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from lax_pretrain.bench.models import TINY, Case, Stepper, model_config, step_program
from lax_pretrain.machine import loadavg
from lax_pretrain.models import get_task
from lax_pretrain.optim import make_optimizer
from lax_pretrain.timing import paired_ratio, time_interleaved

# XLA:CPU compile options the suite can time our step under (`--xla_options=NAME,...`): the candidates of
# issue 17 (jaxlib 0.10.2 spellings; `XLA_FLAGS=--help` lists every flag).
XLA_CPU_OPTIONS = {
    "ynn_all": {
        "xla_cpu_experimental_ynn_fusion_type": (
            "LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_ELTWISE,LIBRARY_FUSION_TYPE_REDUCE"
        )
    },
    "ynn_dot": {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT"},
    "onednn": {"xla_cpu_use_onednn": True},
    "onednn_custom_call": {"xla_cpu_experimental_onednn_custom_call": True},
    "xnn_graph": {"xla_cpu_experimental_xnn_graph_fusion_mode": "XNN_GRAPH_FUSION_MODE_GREEDY"},
    "vector_512": {"xla_cpu_prefer_vector_width": 512},
    "fast_runtime": {"xla_cpu_opt_preset": "CPU_OPT_PRESET_FAST_RUNTIME"},
    "concurrency_scheduler": {"xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_CONCURRENCY_OPTIMIZED"},
    "no_eigen_threads": {"xla_cpu_multi_thread_eigen": False},
}


def parse_xla_options(text: str) -> dict[str, dict]:
    """'ynn_all,onednn' -> {name: options} from XLA_CPU_OPTIONS; an unknown name is a ValueError."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in XLA_CPU_OPTIONS]
    if unknown:
        raise ValueError(f"--xla_options: {unknown[0]!r} is not one of {', '.join(XLA_CPU_OPTIONS)}")
    return {n: XLA_CPU_OPTIONS[n] for n in names}


ACTIVATIONS = {"silu": jax.nn.silu, "gelu": lambda u: jax.nn.gelu(u, approximate=False), "relu": jax.nn.relu}


# ------------------------------------------------------------------------------ parameters from our model


def _check(layer) -> None:
    if layer.spec.crossed:
        raise ValueError(f"{layer.name}: the references have no LaX crossing (use crossing 'none')")
    if layer.spec.kind not in ("dense", "svd", "cola"):
        raise ValueError(f"{layer.name}: kind {layer.spec.kind!r} has no plain reference (dense, svd, cola)")


def _projection(layer) -> dict[str, Any]:
    if layer.spec.kind == "dense":
        return {"kernel": layer.kernel[...]}
    return {"down": layer.down[...], "up": layer.up[...]}


def plain_params(model) -> dict[str, Any]:
    """Our LLaMA's parameters as the references' dict: embed, blocks[i][norms and projections], final_norm,
    head. `model` may be a module or a module merged with a gradient state (then these are its gradients)."""
    if model.cfg.scan_layers:
        raise ValueError("model.scan_layers=True: the references are unrolled (set scan=0)")
    if model.cfg.tie_embeddings:
        raise ValueError("model.tie_embeddings=True: the references have an untied head")
    stack = [model.blocks.first, *model.blocks.rest]
    for block in stack:
        for name in ("q", "k", "v", "o"):
            _check(getattr(block.attn, name))
        for name in ("gate", "up", "down"):
            _check(getattr(block.mlp, name))
    blocks = []
    for block in stack:
        a, m = block.attn, block.mlp
        blocks.append(
            {
                "attn_norm": block.attn_norm.scale[...],
                "mlp_norm": block.mlp_norm.scale[...],
                **{n: _projection(getattr(a, n)) for n in ("q", "k", "v", "o")},
                **{n: _projection(getattr(m, n)) for n in ("gate", "up", "down")},
            }
        )
    return {
        "embed": model.embed[...],
        "blocks": blocks,
        "final_norm": model.final_norm.scale[...],
        "head": model.head[...],
    }


def _settings(model_cfg) -> dict[str, Any]:
    d, h = model_cfg.d_model, model_cfg.num_heads
    return dict(
        heads=h,
        kv_heads=model_cfg.num_kv_heads,
        head_dim=model_cfg.get("head_dim") or d // h,
        theta=float(model_cfg.rope_theta),
        eps=float(model_cfg.norm_eps),
        act=model_cfg.linear.activation,
        latent_act=model_cfg.linear.kind == "cola" or bool(model_cfg.linear.get("latent_act")),
        outer_act=not model_cfg.only_lr_act,
    )


# ---------------------------------------------------------------------------------------------- plain JAX


def _rms_norm(x, scale, eps):
    scale = scale.reshape(
        (1,) * (x.ndim - 1) + scale.shape
    )  # explicit: tests run with rank promotion 'raise'
    return x * jax.lax.rsqrt(jnp.mean(x * x, -1, keepdims=True) + eps) * scale


def _rope(x_BxLxHxE, theta):
    length, e = x_BxLxHxE.shape[1], x_BxLxHxE.shape[-1]
    inv_freq = 1.0 / theta ** (jnp.arange(0, e, 2, dtype=jnp.float32) / e)
    angles = jnp.arange(length, dtype=jnp.float32)[:, None] * inv_freq[None, :]
    angles = jnp.concatenate([angles, angles], -1)[None, :, None, :]
    half = e // 2
    rotated = jnp.concatenate([-x_BxLxHxE[..., half:], x_BxLxHxE[..., :half]], -1)
    return x_BxLxHxE * jnp.cos(angles) + rotated * jnp.sin(angles)


def plain_logits(params: dict, tokens_BxL: jax.Array, s: dict) -> jax.Array:
    act = ACTIVATIONS[s["act"]]

    def proj(x, p):
        if "kernel" in p:
            return x @ p["kernel"]
        h = x @ p["down"]
        return (act(h) if s["latent_act"] else h) @ p["up"]

    b, length = tokens_BxL.shape
    h, kv, e = s["heads"], s["kv_heads"], s["head_dim"]
    x = params["embed"][tokens_BxL]
    for blk in params["blocks"]:
        y = _rms_norm(x, blk["attn_norm"], s["eps"])
        q = _rope(proj(y, blk["q"]).reshape(b, length, h, e), s["theta"])
        k = _rope(proj(y, blk["k"]).reshape(b, length, kv, e), s["theta"])
        v = proj(y, blk["v"]).reshape(b, length, kv, e)
        a = jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="xla")
        x = x + proj(a.reshape(b, length, h * e), blk["o"])
        y = _rms_norm(x, blk["mlp_norm"], s["eps"])
        g, u = proj(y, blk["gate"]), proj(y, blk["up"])
        x = x + proj((jax.nn.silu(g) if s["outer_act"] else g) * u, blk["down"])
    return _rms_norm(x, params["final_norm"], s["eps"]) @ params["head"]


def plain_loss(params: dict, batch: dict, s: dict) -> jax.Array:
    nll = optax.softmax_cross_entropy_with_integer_labels(
        plain_logits(params, batch["inputs"], s), batch["targets"]
    )
    w = batch["weights"].astype(jnp.float32)
    return (nll * w).sum() / jnp.maximum(w.sum(), 1.0)


def plain_jax_step(config: Any):
    """(init(params) -> opt_state, jitted step(params, opt_state, batch, step) -> (params, opt_state, loss)),
    parameters and optimizer state donated, as in our step."""
    s = _settings(config.model)
    tx, _ = make_optimizer(config.optim, config.train.steps)

    def step(params, opt_state, batch, step_index):
        del step_index  # the schedule is inside tx, as in ours
        loss, grads = jax.value_and_grad(plain_loss)(params, batch, s)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return jax.jit(tx.init), jax.jit(step, donate_argnums=(0, 1))


# ------------------------------------------------------------------------------------------------ PyTorch


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


class TorchStep:
    """The same model and train step in eager PyTorch (float32, CPU), parameters copied from `params`.

    `loss(batch)` is the forward loss; `__call__()` runs one step (zero_grad, forward, backward, clip, AdamW)
    on the batch given at construction. The learning rate is the schedule's at step 0, as in our timed steps."""

    def __init__(self, params: dict, config: Any, batch: dict):
        import torch

        self.torch, self.s = torch, _settings(config.model)
        o = config.optim
        as_param = lambda a: torch.nn.Parameter(torch.from_numpy(np.array(a, np.float32)))  # noqa: E731
        self.params = jax.tree.map(as_param, params)
        self.leaves = jax.tree.leaves(self.params)
        _, schedule = make_optimizer(o, config.train.steps)
        self.opt = torch.optim.AdamW(
            self.leaves, lr=float(schedule(0)), betas=(o.b1, o.b2), eps=o.eps, weight_decay=o.weight_decay
        )
        self.clip = float(o.clip_norm or 0.0)
        self.batch = {k: torch.from_numpy(np.array(v)) for k, v in batch.items()}

    def _rms(self, x, scale):
        return x * self.torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.s["eps"]) * scale

    def _rope(self, x):
        torch = self.torch
        length, e = x.shape[1], x.shape[-1]
        inv_freq = 1.0 / self.s["theta"] ** (torch.arange(0, e, 2, dtype=torch.float32) / e)
        angles = torch.arange(length, dtype=torch.float32)[:, None] * inv_freq[None, :]
        angles = torch.cat([angles, angles], -1)[None, :, None, :]
        half = e // 2
        rotated = torch.cat([-x[..., half:], x[..., :half]], -1)
        return x * angles.cos() + rotated * angles.sin()

    def logits(self, tokens):
        F, s = self.torch.nn.functional, self.s
        act = {"silu": F.silu, "gelu": F.gelu, "relu": F.relu}[s["act"]]

        def proj(x, p):
            if "kernel" in p:
                return x @ p["kernel"]
            h = x @ p["down"]
            return (act(h) if s["latent_act"] else h) @ p["up"]

        b, length = tokens.shape
        h, kv, e = s["heads"], s["kv_heads"], s["head_dim"]
        p = self.params
        x = p["embed"][tokens]
        for blk in p["blocks"]:
            y = self._rms(x, blk["attn_norm"])
            q = self._rope(proj(y, blk["q"]).view(b, length, h, e)).transpose(1, 2)
            k = self._rope(proj(y, blk["k"]).view(b, length, kv, e)).transpose(1, 2)
            v = proj(y, blk["v"]).view(b, length, kv, e).transpose(1, 2)
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=kv != h)
            x = x + proj(a.transpose(1, 2).reshape(b, length, h * e), blk["o"])
            y = self._rms(x, blk["mlp_norm"])
            g, u = proj(y, blk["gate"]), proj(y, blk["up"])
            x = x + proj((F.silu(g) if s["outer_act"] else g) * u, blk["down"])
        return self._rms(x, p["final_norm"]) @ p["head"]

    def loss(self, batch=None):
        F = self.torch.nn.functional
        batch = self.batch if batch is None else batch
        logits = self.logits(batch["inputs"].long())
        nll = F.cross_entropy(logits.flatten(0, 1), batch["targets"].long().flatten(), reduction="none")
        w = batch["weights"].float().flatten()
        return (nll * w).sum() / w.sum().clamp(min=1.0)

    def grads(self) -> dict:
        """The gradients of the loss on the construction batch, in `params`' structure (numpy)."""
        self.opt.zero_grad(set_to_none=True)
        self.loss().backward()
        return jax.tree.map(lambda t: t.grad.numpy().copy(), self.params)

    def __call__(self):
        self.opt.zero_grad(set_to_none=True)
        loss = self.loss()
        loss.backward()
        if self.clip > 0:
            self.torch.nn.utils.clip_grad_norm_(self.leaves, self.clip)
        self.opt.step()
        return loss.detach()


def torch_threads() -> int | None:
    """PyTorch's intra-op thread count (None without PyTorch): recorded next to its timings."""
    if not torch_available():
        return None
    import torch

    return torch.get_num_threads()


# ------------------------------------------------------------------------------------------------- suite


class _PlainStepper:
    """One plain-JAX train step per call, carrying the donated state."""

    def __init__(self, step, params, opt_state, batch):
        self.step, self.params, self.opt_state, self.batch = step, params, opt_state, batch
        self.index = jnp.zeros((), jnp.int32)

    def __call__(self):
        self.params, self.opt_state, loss = self.step(self.params, self.opt_state, self.batch, self.index)
        return loss


def default_cases(tiny: bool = False) -> list[Case]:
    if tiny:
        return [Case("llama", "nano", 2, 32, shrink=TINY)]
    return [Case("llama", "nano", 32, 128)]


def run_reference(
    *,
    cases: list[Case] | None = None,
    kinds: tuple[str, ...] = ("dense", "cola"),
    xla_options: dict[str, dict] | None = None,
    repeats: int = 5,
    warmup: int = 2,
    min_sample_s: float = 0.0,
    dtype: str = "float32",
    seed: int = 0,
    tiny: bool = False,
    log=print,
) -> dict[str, Any]:
    """Per case and kind, side by side: our train step (and under each of `xla_options`, name -> compile
    options), the plain-JAX step and the PyTorch step (CPU backends only). Always float32 (`dtype` is
    recorded, not used: the PyTorch reference is a float32 CPU step). JSON-ready result."""
    del dtype
    cases = cases if cases is not None else default_cases(tiny)
    with_torch = torch_available() and jax.default_backend() == "cpu"
    load_before, rows = loadavg(), []
    options = {"default": {}, **(xla_options or {})}
    for case in cases:
        if not get_task(case.family).counts_tokens:
            raise ValueError(f"case {case.label}: the references are the LLaMA language model")
        fns, meta = {}, {}
        for kind in kinds:
            config = model_config(
                "llama", case.preset, kind, "none", extra={"scan": False}, shrink=case.shrink
            )
            program = step_program(config, case.batch_size, case.seq_len, seed=seed)
            host_batch = program.task.batch(config.model, case.batch_size, case.seq_len, seed)
            batch = jax.device_put(host_batch, program.batch_shardings)
            # Host copies first: our step donates its parameter buffers.
            params = jax.tree.map(np.asarray, plain_params(_merged(program)))
            for name, opts in options.items():
                label = "ours" if name == "default" else f"ours[{name}]"
                compiled = program.lower_train_step().compile(compiler_options=opts or None)
                state = jax.tree.map(jnp.copy, (program.params, program.opt_state))
                fns[f"{kind}/{label}"] = Stepper(compiled, *state, program.frozen, batch)
                meta[f"{kind}/{label}"] = dict(kind=kind, impl=label, options=opts)
            init, step = plain_jax_step(config)
            jparams = jax.tree.map(jnp.asarray, params)
            # Default placement (not the program's NamedSharding): its outputs keep the inputs' placement.
            fns[f"{kind}/plain_jax"] = _PlainStepper(step, jparams, init(jparams), jax.device_put(host_batch))
            meta[f"{kind}/plain_jax"] = dict(kind=kind, impl="plain_jax", options={})
            if with_torch:
                fns[f"{kind}/pytorch"] = TorchStep(params, config, host_batch)
                meta[f"{kind}/pytorch"] = dict(kind=kind, impl="pytorch", options={})
            log(
                f"[reference] {case.label} {kind}: {', '.join(m['impl'] for m in meta.values() if m['kind'] == kind)}"
            )
        stats = time_interleaved(fns, repeats=repeats, warmup=warmup, min_sample_s=min_sample_s)
        tokens = case.batch_size * case.seq_len
        case_rows = []
        for name, st in stats.items():
            m = meta[name]
            case_rows.append(
                {
                    "name": name,
                    "case": case.label,
                    "preset": case.preset,
                    "shrunk": bool(case.shrink),
                    "kind": m["kind"],
                    "impl": m["impl"],
                    "compiler_options": m["options"],
                    "step_time": st.to_json(),
                    "step_time_s": st.median,
                    "tokens_per_s": tokens / st.median,
                }
            )
        for r in case_rows:
            same = {x["impl"]: x for x in case_rows if x["kind"] == r["kind"]}
            for other in ("plain_jax", "pytorch", "ours"):
                if other in same and r["impl"] != other:  # paired medians (timing.paired_ratio)
                    r[f"over_{other}"] = paired_ratio(stats[r["name"]], stats[same[other]["name"]])
                    r[f"over_{other}_min"] = r["step_time"]["min"] / same[other]["step_time"]["min"]
        rows += case_rows
        log(
            f"[reference] {case.label}: " + ", ".join(f"{n} {s.median * 1e3:.0f}ms" for n, s in stats.items())
        )
    return {
        "suite": "reference",
        "settings": dict(
            cases=[c.label for c in cases],
            kinds=list(kinds),
            xla_options=options,
            repeats=repeats,
            warmup=warmup,
            min_sample_s=min_sample_s,
            dtype="float32",
            seed=seed,
            torch_threads=torch_threads() if with_torch else None,
            unit="one train step (forward, backward, clip, AdamW update), float32, synthetic batch",
        ),
        "notes": []
        if with_torch
        else [
            "PyTorch rows omitted: "
            + (
                "not installed"
                if not torch_available()
                else f"backend {jax.default_backend()} (the PyTorch reference runs on CPU)"
            )
        ],
        "load": {"before": load_before, "after": loadavg()},
        "rows": rows,
    }


def _merged(program) -> nnx.Module:
    return nnx.merge(program.graphdef, program.params, program.frozen)
