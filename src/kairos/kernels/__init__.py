"""Compute kernels that torch does not provide for this engine's needs (CPU GGUF matmuls)."""
