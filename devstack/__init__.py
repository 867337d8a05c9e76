"""The local process stack for development (`dfusion stack up|down|status|wait`): Redis, SeaweedFS,
the API and one Celery worker per queue, supervised on this machine. A developer tool, not a service:
`procs` (processes and servers as data), `plan` (what the stack runs), `health` (probes), `stack`
(starting, supervising and stopping it); for the integration tests and the benches, `harness` (a
throwaway stack and its handle) and `netns` (worker "hosts" in network namespaces). Queue names and
the worker command line come from `services.queue`.
"""
