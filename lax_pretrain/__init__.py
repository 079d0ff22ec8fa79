"""lax-pretrain: low-rank pretraining (SVD, tensor-train, CoLA) with LaX latent crossing, in JAX/Flax NNX."""

__version__ = "0.1.0"
