"""One router per resource: jobs (and their records), objects, health/metrics."""
