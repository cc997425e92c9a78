"""Shipping stages: the final bundle with its reports (pack.py) and a Triton Inference Server
model repository (triton.py)."""
