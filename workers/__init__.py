"""Celery task wrappers and the embedded runner: glue between dfusion_core and services."""

from dfusion_core.quiet import quiet_third_party

quiet_third_party()  # a worker or embedded run imports transformers through its stages: filter first
