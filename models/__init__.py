"""Model definitions trained by hogwild_mts.

``hogwild_mts.models.linear`` holds the numba loss kernels of the linear models (no torch import); the torch
networks live in their own module so that linear-model workers never import torch.
"""
