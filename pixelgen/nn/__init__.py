"""Layers shared by the JiT backbones: RMSNorm, SwiGLU, sin-cos tables, timestep embedding, 2-D RoPE, attention."""

from .attention_backends import ATTENTION_BACKENDS, attention, check_backend, xformers_status
from .embeddings import TimestepEmbedder, sincos_2d_table, timestep_features
from .mlp import SwiGLU, swiglu_hidden_size
from .norm import RMSNorm
from .rope import RotaryTable, apply_rotary_pairs, axial_rope_2d, linspace_rope_2d

__all__ = [
    "ATTENTION_BACKENDS",
    "RMSNorm",
    "RotaryTable",
    "SwiGLU",
    "TimestepEmbedder",
    "apply_rotary_pairs",
    "attention",
    "axial_rope_2d",
    "check_backend",
    "linspace_rope_2d",
    "sincos_2d_table",
    "swiglu_hidden_size",
    "timestep_features",
    "xformers_status",
]
