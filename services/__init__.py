"""Infrastructure services: settings, object storage, Redis state, local stack.

Torch-free by design: the API process imports this package and must not load torch.
"""
