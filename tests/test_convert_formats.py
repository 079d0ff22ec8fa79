"""The authors' CoLA format and our LaX format, both ways, on tiny random models (CPU, float32).

References: the CoLA checkpoint is checked against a PyTorch CoLA LLaMA written here from the format's
description alone (transformers' LlamaForCausalLM with every projection replaced by y = silu(x A) B, A and B
stored as used; docs/interop.md), never against our code; the LaX export against transformers loading it with
`trust_remote_code=True`. Parameters are redrawn at O(1) scale (norm scales near 1, matrices at
1/sqrt(fan_in)) so the logits are O(1) and a 1e-4 tolerance means something; token 0 (CoLA's pad id) is
among the inputs.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx, traverse_util
from safetensors.numpy import load_file
from safetensors.torch import save_file as torch_save_file
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from lax_pretrain.bench.models import shrink_model
from lax_pretrain.config import llama_config
from lax_pretrain.convert import (
    cola_checkpoint,
    export_checkpoint,
    load_checkpoint,
    load_imported,
    save_imported,
)
from lax_pretrain.convert.export_dir import EXPORT_FILES
from lax_pretrain.convert.hf_llama import main as lax_convert
from lax_pretrain.convert.representable import later_specs
from lax_pretrain.convert.weights import model_from_params, param_paths
from lax_pretrain.models import build

VOCAB = 128
TOKENS = np.random.default_rng(0).integers(0, VOCAB, (2, 12))
TOKENS[:, 0] = 0  # CoLA's pad id: the pad-row convention is exercised
# The authors' token ids: with pad_token_id 0, transformers builds nn.Embedding(padding_idx=0), as they do.
TOKEN_IDS = {"bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 0}


def tiny_config(kind="cola", lax="none", *, only_lr_act=False, kv_heads=4, **model):
    config = llama_config("nano", kind=kind, lax=lax, rank=8, only_lr_act=only_lr_act)
    shrink_model(
        config,
        d_model=64,
        num_layers=2,
        num_heads=4,
        rank=8,
        ffn_dim=96,
        vocab_size=VOCAB,
        num_kv_heads=kv_heads,
    )
    config.model.update(model)
    return config.model


def random_model(cfg, seed=0):
    """The model of `cfg` with every parameter redrawn at O(1) scale."""
    model = build(cfg, rngs=nnx.Rngs(seed))
    rng = np.random.default_rng(seed)
    flat = traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    for path, value in flat.items():
        shape = value.shape
        if len(shape) == 2:
            new = rng.standard_normal(shape) / math.sqrt(shape[0])
        else:
            new = (path[-1] != "bias") + 0.1 * rng.standard_normal(shape)  # scales near 1, biases near 0
        flat[path] = jnp.asarray(new, jnp.float32)
    state = nnx.state(model, nnx.Param)
    nnx.replace_by_pure_dict(state, traverse_util.unflatten_dict(flat))
    nnx.update(model, state)
    return model


def params(model) -> dict:
    flat = traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    return {k: np.asarray(v) for k, v in flat.items()}


def logits(model) -> np.ndarray:
    return np.asarray(model(jnp.asarray(TOKENS)))


def specs(cfg) -> dict:
    """What the config makes each projection and the model compute (init fields aside), for round trips."""
    out = {
        name: (s.kind, s.rank, s.crossing, s.latent_norm, s.activation, s.latent_act)
        for name, s in later_specs(cfg).items()
    }
    keys = ("d_model", "num_layers", "num_heads", "num_kv_heads", "ffn_dim", "vocab_size", "tie_embeddings")
    return {**out, **{k: cfg[k] for k in (*keys, "only_lr_act", "rope_theta", "norm_eps")}}


def assert_bit_identical(got, want) -> None:
    got, want = params(got), params(want)
    assert got.keys() == want.keys()
    for key in want:
        assert np.array_equal(got[key], want[key]), key


# ---------------------------------------------------------------- the authors' CoLA format

COLA_CASES = {  # only_lr_act, kv heads, tied embeddings
    "only_lr_act=0": dict(only_lr_act=False),
    "only_lr_act=1,gqa,tied": dict(only_lr_act=True, kv_heads=2, tie_embeddings=True),
}


class ColaFactor(torch.nn.Module):
    """CoLA's factor layer as the format describes it: y = silu(x @ cola_a) @ cola_b, no bias."""

    def __init__(self, d_in: int, d_out: int, rank: int):
        super().__init__()
        self.cola_a = torch.nn.Parameter(torch.zeros(d_in, rank))
        self.cola_b = torch.nn.Parameter(torch.zeros(rank, d_out))

    def forward(self, x):
        return torch.nn.functional.silu(x @ self.cola_a) @ self.cola_b


def torch_cola(config: dict) -> LlamaForCausalLM:
    """A PyTorch CoLA LLaMA for a CoLA config.json: transformers' LLaMA with CoLA projections."""
    llama_keys = {k: v for k, v in config.items() if k not in ("architectures", "model_type", "rank")}
    model = LlamaForCausalLM(LlamaConfig(**llama_keys))
    for layer in model.model.layers:
        for module in (layer.self_attn, layer.mlp):
            for name, child in list(module.named_children()):
                if isinstance(child, torch.nn.Linear):
                    setattr(module, name, ColaFactor(child.in_features, child.out_features, config["rank"]))
        if config.get("only_lr_act", True):  # the authors' default
            layer.mlp.act_fn = torch.nn.Identity()
    return model.eval()


def load_torch_cola(path: Path) -> LlamaForCausalLM:
    config = json.loads((path / "config.json").read_text())
    model = torch_cola(config)
    tensors = {k: torch.from_numpy(v) for k, v in load_file(path / "model.safetensors").items()}
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    assert not unexpected and set(missing) <= ({"lm_head.weight"} if config["tie_word_embeddings"] else set())
    return model


def torch_logits(model) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor(TOKENS)).logits.numpy()


@pytest.fixture(scope="module", params=list(COLA_CASES))
def cola_export(request, tmp_path_factory):
    cfg = tiny_config("cola", **COLA_CASES[request.param])
    model = random_model(cfg)
    fmt, out = export_checkpoint(
        model, cfg, tmp_path_factory.mktemp("cola") / "export", base_config=TOKEN_IDS
    )
    assert fmt == "cola"
    return model, cfg, out


def test_cola_export_writes_the_authors_layout(cola_export):
    model, cfg, out = cola_export
    config = json.loads((out / "config.json").read_text())
    assert (config["model_type"], config["architectures"], config["rank"]) == ("cola", ["ColaForCausalLM"], 8)
    assert config["only_lr_act"] is cfg.only_lr_act and sorted(p.name for p in out.iterdir()) == [
        "config.json",
        "model.safetensors",
    ]
    tensors = load_file(out / "model.safetensors")
    block = params(model)
    # Stored as used (x @ A @ B), not transposed like nn.Linear: A is our down, B our up, as they are.
    np.testing.assert_array_equal(
        tensors["model.layers.1.mlp.down_proj.cola_a"], block[("blocks", "rest", 0, "mlp", "down", "down")]
    )
    assert tensors["model.layers.0.mlp.down_proj.cola_a"].shape == (96, 8)
    assert tensors["model.layers.0.self_attn.k_proj.cola_b"].shape == (8, 16 * cfg.num_kv_heads)
    assert ("lm_head.weight" in tensors) is not cfg.tie_embeddings
    assert not any("lax_" in name for name in tensors)
    # Our pad row is written as trained (nonzero); padding_idx=0 on their side only masks its gradient.
    assert config["pad_token_id"] == 0 and np.abs(tensors["model.embed_tokens.weight"][0]).min() > 0


def test_cola_export_import_bit_identical(cola_export):
    model, cfg, out = cola_export
    again, cfg_again, fmt = load_checkpoint(out)
    assert fmt == "cola" and specs(cfg_again) == specs(cfg)
    assert_bit_identical(again, model)


def test_cola_logits_match_pytorch_reference(cola_export):
    model, _, out = cola_export
    ours, ref = logits(model), torch_logits(load_torch_cola(out))
    assert np.abs(ref).max() > 1.0  # not a comparison of near-zero logits
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)


def test_cola_import_reads_the_authors_checkpoint(tmp_path):
    """A directory as the authors' save_pretrained writes it (their keys, only_lr_act left at its default,
    pad row 0 at zero, a stale RoPE buffer): the import gives the PyTorch model's logits."""
    config = {
        "architectures": ["ColaForCausalLM"],
        "model_type": "cola",
        "hidden_size": 64,
        "intermediate_size": 96,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-6,
        "vocab_size": VOCAB,
        "bos_token_id": 0,
        "eos_token_id": 1,
        "pad_token_id": 0,
        "max_sequence_length": 256,
        "initializer_range": 0.02,
        "use_cache": True,
        "torch_dtype": "float32",
        "transformers_version": "4.46.0",
        "rank": 8,
    }
    torch.manual_seed(0)
    ref = torch_cola(config)
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(
                1 + 0.1 * torch.randn_like(p) if p.ndim == 1 else torch.randn_like(p) / math.sqrt(p.shape[0])
            )
        ref.model.embed_tokens.weight[0] = 0  # padding_idx=0
    tensors = {k: v.contiguous() for k, v in ref.state_dict().items()}
    tensors["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(8)
    torch_save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    (tmp_path / "config.json").write_text(json.dumps(config))

    model, cfg, fmt = load_checkpoint(tmp_path)
    assert fmt == "cola" and cfg.only_lr_act and cfg.proj.q.rank == 8
    assert not params(model)[("embed",)][0].any()
    np.testing.assert_allclose(logits(model), torch_logits(ref), atol=1e-4, rtol=0)


# ---------------------------------------------------------------- our LaX format

LAX_CASES = {
    "cola,kron,layernorm": dict(kind="cola", lax="kron"),
    "svd,dense,rmsnorm,only_lr_act,gqa,tied,k_rank=4": dict(
        kind="svd", lax="dense", only_lr_act=True, kv_heads=2, tie_embeddings=True
    ),
    "cola,identity,no_norm": dict(kind="cola", lax="identity"),
}


@pytest.fixture(scope="module", params=list(LAX_CASES))
def lax_export(request, tmp_path_factory):
    case = dict(LAX_CASES[request.param])
    cfg = tiny_config(case.pop("kind"), case.pop("lax"), **case)
    if cfg.linear.kind == "svd":
        cfg.linear.latent_norm = "rmsnorm"
        cfg.proj.k.rank = 4  # per-projection ranks
    if cfg.linear.crossing == "identity":
        cfg.linear.latent_norm = "none"
    model = random_model(cfg, seed=1)
    fmt, out = export_checkpoint(model, cfg, tmp_path_factory.mktemp("lax") / "export", base_config=TOKEN_IDS)
    assert fmt == "lax"
    return model, cfg, out


def test_lax_export_import_bit_identical(lax_export):
    model, cfg, out = lax_export
    config = json.loads((out / "config.json").read_text())
    assert config["lax_crossing"] == cfg.linear.crossing and config["auto_map"]
    assert config["lax_latent_act"] == ("silu" if cfg.linear.kind == "cola" else None)
    if cfg.linear.kind == "svd":
        assert config["rank"] == {"q": 8, "k": 4, "v": 8, "o": 8, "gate": 8, "up": 8, "down": 8}
    again, cfg_again, fmt = load_checkpoint(out)
    assert fmt == "lax" and specs(cfg_again) == specs(cfg)
    assert_bit_identical(again, model)


def test_lax_export_loads_in_transformers_with_our_logits(lax_export):
    model, _, out = lax_export
    assert (out / "modeling_lax_llama.py").exists()
    hf = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True, dtype=torch.float32).eval()
    assert type(hf).__name__ == "LaxLlamaForCausalLM"
    ours = logits(model)
    assert np.abs(ours).max() > 1.0
    np.testing.assert_allclose(torch_logits(hf), ours, atol=1e-4, rtol=0)


def test_lax_generation_with_kv_cache_follows_our_logits(lax_export):
    """transformers' cached greedy decoding (latents crossing layer to layer one new token at a time) picks
    what our full forward pass over the generated text ranks first at every step."""
    model, _, out = lax_export
    hf = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True, dtype=torch.float32).eval()
    prompt = torch.tensor(TOKENS[:, :6])
    with torch.no_grad():
        generated = hf.generate(prompt, max_new_tokens=5, do_sample=False, use_cache=True, pad_token_id=0)
    ours = np.asarray(model(jnp.asarray(generated.numpy())))
    np.testing.assert_array_equal(ours[:, 5:-1].argmax(-1), generated[:, 6:].numpy())


def test_scanned_models_export_and_import(tmp_path):
    """A scan_layers model (blocks 1..L-1 stacked) exports layer by layer and imports bit for bit, unrolled
    (each layer its slice) and scanned."""
    cfg = tiny_config("cola", "kron", num_layers=3)
    unrolled = random_model(cfg)
    scanned_cfg = cfg.copy_and_resolve_references()
    scanned_cfg.scan_layers = True
    scanned = model_from_params(scanned_cfg, *param_paths(unrolled))  # the same values, stacked
    _, out = export_checkpoint(scanned, scanned_cfg, tmp_path / "lax")
    assert_bit_identical(load_checkpoint(out)[0], unrolled)
    assert_bit_identical(load_checkpoint(out, scan_layers=True)[0], scanned)


# ---------------------------------------------------------------- what cannot be written or read


def refused_cases() -> list:
    """(model config, --format, the error it must name)."""
    tt_intra, uneven = tiny_config("tt"), tiny_config("cola")
    for name in ("q", "k", "v", "o"):
        tt_intra.proj[name].intra = True  # intra-layer LaX as released: the attention projections
    uneven.proj.k.rank = 4
    return [
        (
            tiny_config("tt", "kron"),
            "auto",
            r"model\.linear\.kind='tt' with model\.linear\.crossing='kron' cannot",
        ),
        (tt_intra, "cola", r"model\.proj\.q\.intra=True: TT intra-layer LaX cannot be written"),
        (tiny_config("cola", "kron"), "cola", r"model\.linear\.crossing='kron': the authors' CoLA format"),
        (tiny_config("svd"), "cola", r"model\.linear\.latent_act: latent_act=False \(svd\)"),
        (uneven, "cola", r"model\.proj\.k\.rank=4 differs from model\.proj\.q\.rank=8"),
        (tiny_config("cola"), "hf_llama", r"model\.linear\.kind='cola' is not a linear map"),
        (tiny_config("dense"), "lax", r"model\.linear\.kind='dense' cannot be written in the lax format"),
    ]


REFUSED = refused_cases()


@pytest.mark.parametrize(
    "cfg,fmt,error", REFUSED, ids=[f"{c.linear.kind},{c.linear.crossing}->{f}" for c, f, _ in REFUSED]
)
def test_unrepresentable_exports_are_refused_naming_the_key(tmp_path, cfg, fmt, error):
    abstract = nnx.eval_shape(lambda: build(cfg, rngs=nnx.Rngs(0)))  # refused from the config alone
    with pytest.raises(ValueError, match=error):
        export_checkpoint(abstract, cfg, tmp_path / "new" / "out", format=fmt)
    assert list(tmp_path.iterdir()) == []


def test_failed_export_leaves_no_partial_directory(tmp_path, monkeypatch):
    cfg = tiny_config("cola")
    model = random_model(cfg)
    out = tmp_path / "parent" / "out"

    def half_written(tensors, path):
        path.write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(cola_checkpoint, "write_safetensors", half_written)
    with pytest.raises(OSError, match="disk full"):
        export_checkpoint(model, cfg, out)
    assert list(tmp_path.iterdir()) == []  # neither --out, nor its temporary sibling, nor the parent we made

    monkeypatch.undo()
    export_checkpoint(model, cfg, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    monkeypatch.setattr(cola_checkpoint, "write_safetensors", half_written)
    with pytest.raises(OSError):
        export_checkpoint(model, cfg, out)  # an earlier export stays as it was
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before and len(list(out.parent.iterdir())) == 1
    monkeypatch.undo()
    export_checkpoint(model, cfg, out, format="lax")  # replaces the earlier export
    assert {p.name for p in out.iterdir()} == set(EXPORT_FILES)

    (out / "tokenizer.json").write_text("{}")
    with pytest.raises(FileExistsError, match="holds 'tokenizer.json', which no export writes"):
        export_checkpoint(model, cfg, out)
    assert (out / "tokenizer.json").exists()


def _edited(src: Path, dst: Path, **changes) -> Path:
    dst.mkdir()
    (dst / "model.safetensors").write_bytes((src / "model.safetensors").read_bytes())
    config = {**json.loads((src / "config.json").read_text()), **changes}
    (dst / "config.json").write_text(json.dumps({k: v for k, v in config.items() if v is not ...}))
    return dst


def test_imports_refuse_keys_we_do_not_implement(tmp_path):
    cola = export_checkpoint(random_model(tiny_config("cola")), tiny_config("cola"), tmp_path / "cola")[1]
    crossed = tiny_config("cola", "kron")
    lax = export_checkpoint(random_model(crossed), crossed, tmp_path / "lax")[1]
    cases = [
        (cola, dict(use_sliding_window=True), r"config\.json: 'use_sliding_window' is not a key"),
        (cola, dict(lr_act_type="gelu"), r"config\.json: lr_act_type='gelu' is not supported"),
        (cola, dict(rank=[8]), r"config\.json: rank=\[8\] must be an integer"),
        (lax, dict(lax_latent_norm_eps=1e-5), r"lax_latent_norm_eps=1e-05 is not supported"),
        (lax, dict(lax_crossing=...), r"config\.json: 'lax_crossing' is missing"),
        (
            lax,
            dict(lax_crossing="none"),
            r"unexpected \['blocks\.rest\.0\.attn\.k\.gate\.g0'",
        ),  # unannounced gates
        (cola, dict(model_type="mistral"), r"model_type='mistral' is not one of llama, cola, lax_llama"),
    ]
    for i, (src, changes, error) in enumerate(cases):
        with pytest.raises(ValueError, match=error):
            load_checkpoint(_edited(src, tmp_path / f"case{i}", **changes))


# ---------------------------------------------------------------- the command line


def test_cli_exports_by_format_and_imports_back(tmp_path, capsys):
    for name, cfg in {"cola": tiny_config("cola"), "lax": tiny_config("cola", "kron")}.items():
        model = random_model(cfg)
        workdir = save_imported(model, cfg, tmp_path / f"{name}_run")
        assert lax_convert(["export", f"--workdir={workdir}", f"--out={tmp_path / name}"]) == 0
        assert f"({name})" in capsys.readouterr().out
        assert (
            lax_convert(["import", f"--hf_dir={tmp_path / name}", f"--out={tmp_path / f'{name}_back'}"]) == 0
        )
        assert_bit_identical(load_imported(tmp_path / f"{name}_back")[0], model)
    argv = [
        "import",
        f"--hf_dir={tmp_path / 'cola'}",
        f"--out={tmp_path / 'svd'}",
        "--to_kind=svd",
        "--rank=4",
    ]
    assert lax_convert(argv) == 2 and "is a cola checkpoint" in capsys.readouterr().err
    tt = tiny_config("tt", "kron")
    workdir = save_imported(random_model(tt), tt, tmp_path / "tt_run")
    assert lax_convert(["export", f"--workdir={workdir}", f"--out={tmp_path / 'tt'}"]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("error: model.linear.kind='tt' with model.linear.crossing='kron'")
        and err.count("\n") == 1
    )
    assert not (tmp_path / "tt").exists()


@pytest.mark.slow
def test_a_trained_lax_run_exports_and_transformers_agrees(tmp_path):
    """The real trainer's workdir (cola + kron, 3 steps) -> `lax-convert export` -> transformers' logits
    equal ours (max abs diff < 1e-4)."""
    from lax_pretrain.train import train
    from lax_pretrain.train.checkpoint import load_trained_model

    config = llama_config("nano", kind="cola", lax="kron", rank=8)
    shrink_model(config, d_model=32, num_layers=2, num_heads=2, rank=8, ffn_dim=64)
    config.data.update(seq_len=16, eval_batches=1, data_dir=str(tmp_path / "data"))
    config.train.update(steps=3, batch_size=4, log_every=1, eval_every=3, checkpoint_every=3)
    config.mesh.num_devices = 1
    config.wandb.mode = "disabled"
    assert train(config, tmp_path / "run")["status"] == "done"
    assert lax_convert(["export", f"--workdir={tmp_path / 'run'}", f"--out={tmp_path / 'hf'}"]) == 0

    trained, _, step = load_trained_model(tmp_path / "run")
    tokens = np.random.default_rng(1).integers(0, config.model.vocab_size, (2, 16))
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", trust_remote_code=True, dtype=torch.float32)
    with torch.no_grad():
        theirs = hf.eval()(torch.tensor(tokens)).logits.numpy()
    assert step == 3
    np.testing.assert_allclose(theirs, np.asarray(trained(jnp.asarray(tokens))), atol=1e-4, rtol=0)
