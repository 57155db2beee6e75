"""CUDA target (work in progress)."""
