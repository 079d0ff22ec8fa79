"""Models built only from the factory: a LLaMA-style decoder and a ViT, and the task registry that names them.

model = lax_pretrain.models.build(config.model, rngs=nnx.Rngs(0))
task = lax_pretrain.models.get_task(config.model)   # loss, eval, batch format, headline metric
"""

from __future__ import annotations

from typing import Any

from flax import nnx

from lax_pretrain.models.llama import Llama
from lax_pretrain.models.tasks import TASKS, Task, get_task
from lax_pretrain.models.vit import ViT


def build(model_cfg: Any, *, rngs: nnx.Rngs) -> Llama | ViT:
    return get_task(model_cfg).model_class(model_cfg, rngs=rngs)


__all__ = ["TASKS", "Llama", "Task", "ViT", "build", "get_task"]
