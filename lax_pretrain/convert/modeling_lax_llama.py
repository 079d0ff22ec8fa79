"""LaX LLaMA for Hugging Face transformers: copied by `lax-convert export` into every lax-format directory.

    model = AutoModelForCausalLM.from_pretrained(export_dir, trust_remote_code=True)

A LlamaForCausalLM (RMSNorm, RoPE, grouped-query attention, SwiGLU, as transformers implements them) whose
seven projections are two-factor maps with LaX latent crossing. For projection p of layer l:

    u = x @ cola_a                                  cola_a (d_in, r)
    if l >= 1 and lax_crossing != "none":
        u = u + gate(z)                             z: layer l-1's latent of the same projection p
        u = lax_norm(u)                             lax_latent_norm over r (eps lax_latent_norm_eps)
    z = act(u)                                      lax_latent_act; None (an svd model) is the identity
    y = z @ cola_b                                  cola_b (r, d_out)

gate: identity (z), dense (z @ lax_gate.kernel + lax_gate.bias) or kron (z @ kron(lax_gate.g1, lax_gate.g0)).
`only_lr_act` drops the SiLU on the MLP gate's output. Latents pass from layer to layer through one dict per
model, filled in layer order during each forward pass; a latent depends on its own position only, so
KV-cached generation needs nothing more. Gradient checkpointing would recompute a layer after later layers
overwrote that dict, so it is off. This file imports only torch and transformers (lax-pretrain never imports
it); the format is defined in lax-pretrain's docs/interop.md.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

ACTIVATIONS = {"silu": F.silu, "gelu": F.gelu, "relu": F.relu, None: lambda u: u}  # gelu: exact (erf)
PROJECTIONS = {
    "q": ("self_attn", "q_proj"),
    "k": ("self_attn", "k_proj"),
    "v": ("self_attn", "v_proj"),
    "o": ("self_attn", "o_proj"),
    "gate": ("mlp", "gate_proj"),
    "up": ("mlp", "up_proj"),
    "down": ("mlp", "down_proj"),
}


class LaxLlamaConfig(LlamaConfig):
    model_type = "lax_llama"

    rank: int | dict = 64  # or {projection: rank}
    only_lr_act: bool = False
    lax_latent_act: str | None = "silu"
    lax_crossing: str = "kron"
    lax_latent_norm: str = "layernorm"
    lax_latent_norm_eps: float = 1e-6
    lax_format_version: int = 1


class KronGate(nn.Module):
    def __init__(self, r: int):
        super().__init__()
        f0 = max(f for f in range(1, math.isqrt(r) + 1) if r % f == 0)  # the most balanced pair f0 <= f1
        self.g0 = nn.Parameter(torch.eye(r // f0))
        self.g1 = nn.Parameter(torch.eye(f0))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z @ torch.kron(self.g1, self.g0).to(z.dtype)


class DenseGate(nn.Module):
    def __init__(self, r: int):
        super().__init__()
        self.kernel = nn.Parameter(torch.eye(r))
        self.bias = nn.Parameter(torch.zeros(r))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.kernel.to(z.dtype) + self.bias.to(z.dtype)


class LatentNorm(nn.Module):
    """LayerNorm (weight, bias) or RMSNorm (weight) over the latent, computed in float32."""

    def __init__(self, r: int, kind: str, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(r))
        self.bias = nn.Parameter(torch.zeros(r)) if kind == "layernorm" else None
        self.eps = eps

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        x = u.float()
        if self.bias is not None:
            x = x - x.mean(-1, keepdim=True)
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight.float()
        if self.bias is not None:
            x = x + self.bias.float()
        return x.to(u.dtype)


class LaxLinear(nn.Module):
    def __init__(self, d_in: int, d_out: int, rank: int, name: str, crossed: bool, config, latents: dict):
        super().__init__()
        std = config.initializer_range
        self.cola_a = nn.Parameter(torch.randn(d_in, rank) * std)
        self.cola_b = nn.Parameter(torch.randn(rank, d_out) * std)
        self.name, self.crossed, self.latents = name, crossed, latents
        self.act = ACTIVATIONS[config.lax_latent_act]
        gates = {"identity": lambda r: None, "dense": DenseGate, "kron": KronGate}
        self.lax_gate = gates[config.lax_crossing](rank) if crossed else None
        norm = config.lax_latent_norm
        self.lax_norm = (
            LatentNorm(rank, norm, config.lax_latent_norm_eps) if crossed and norm != "none" else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = x @ self.cola_a.to(x.dtype)
        if self.crossed:
            z_prev = self.latents[self.name].to(u)
            u = u + (z_prev if self.lax_gate is None else self.lax_gate(z_prev))
            if self.lax_norm is not None:
                u = self.lax_norm(u)
        z = self.act(u)
        self.latents[self.name] = z  # read by the same projection of the next layer
        return z @ self.cola_b.to(z.dtype)


class LaxLlamaForCausalLM(LlamaForCausalLM):
    config_class = LaxLlamaConfig
    supports_gradient_checkpointing = False

    def __init__(self, config: LaxLlamaConfig):
        super().__init__(config)
        d, f = config.hidden_size, config.intermediate_size
        e = getattr(config, "head_dim", None) or d // config.num_attention_heads
        q, kv = config.num_attention_heads * e, config.num_key_value_heads * e
        widths = {
            "q": (d, q),
            "k": (d, kv),
            "v": (d, kv),
            "o": (q, d),
            "gate": (d, f),
            "up": (d, f),
            "down": (f, d),
        }
        ranks = config.rank if isinstance(config.rank, dict) else dict.fromkeys(PROJECTIONS, config.rank)
        self._latents = {}
        for i, layer in enumerate(self.model.layers):
            crossed = i > 0 and config.lax_crossing != "none"
            for name, (module, attr) in PROJECTIONS.items():
                projection = LaxLinear(*widths[name], ranks[name], name, crossed, config, self._latents)
                setattr(getattr(layer, module), attr, projection)
            if config.only_lr_act:
                layer.mlp.act_fn = nn.Identity()

    def forward(self, *args, **kwargs):
        try:
            return super().forward(*args, **kwargs)
        finally:
            self._latents.clear()  # hold no activations between calls
