"""HTTP edge of dfusion: FastAPI routes over job state, the object store and the task queue.

Torch-free by rule (tests/test_layering.py): only services.* and torch-free dfusion_core modules.
"""
