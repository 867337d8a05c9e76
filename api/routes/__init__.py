"""One router per resource: jobs (and their records), objects, compare (a policy beside its base), health/metrics."""
