"""Weights in other formats -> run directories (and back): GGUF, HF."""
