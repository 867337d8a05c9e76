"""Local development stack behind `dfusion stack up|down|status`: the compose file's shape, as processes.

`stack_up` decides what to run (`devstack.plan`: Redis, SeaweedFS, the API, one Celery
worker per queue; servers already reachable are left alone), writes that plan as data (a list of
`ProcessSpec`) and starts a detached `Supervisor` (`python -m devstack.stack supervise ROOT`). The
supervisor spawns the plan, restarts processes that die (compose's restart policy), and keeps
`ROOT/stack.json` current.
`stack_down` stops only the processes recorded there; `stack_kill` kills a throwaway stack's at once.
Tests pass dummy specs (`sleep 1000`).
`stack_health` probes each service by its protocol (`devstack.health`); `wait_healthy`
is what `dfusion stack up` returns after, as `docker compose up --wait` does.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from devstack.health import ServiceHealth, probe_stack, wait_healthy
from devstack.plan import default_specs
from devstack.procs import ProcessInfo, ProcessSpec, pid_alive, spawn, terminate, terminate_all
from services.queue import QUEUES
from services.settings import Settings

logger = logging.getLogger(__name__)

PLAN_FILE, STATE_FILE, SUPERVISOR = "plan.json", "stack.json", "supervisor"
RESTART_BACKOFF_S = 1.0
#: A process that ran this long before it died restarts at once: compose resets its restart delay
#: after 10 s of running likewise. Only a crash loop (deaths sooner than this) backs off.
RESTART_RESET_S = 10.0
#: `stack_kill`'s SIGTERM-to-SIGKILL grace: a throwaway stack holds nothing worth a clean stop, and
#: SeaweedFS spends ~25 s shutting down on SIGTERM.
KILL_GRACE_S = 0.5


def _write_json(path: Path, data: Any) -> None:
    """Atomic, owner-only write: the files may hold the S3 secret."""
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, path)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _spec_from(d: dict[str, Any]) -> ProcessSpec:
    return ProcessSpec(**{k: d[k] for k in ProcessSpec.__dataclass_fields__ if k in d})


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


def _is_ours(pid: int | None, command: list[str]) -> bool:
    """Alive and still running the recorded program (guards against pid reuse).

    Compares program basenames only: redis-server rewrites its argv, and a just-forked child
    briefly shows the supervisor's. The program may be any word of the recorded command: a
    wrapper (`env`, `nice`, `ip netns exec NS`) execs the program it names in its own pid.
    """
    if not pid or not pid_alive(pid):
        return False
    cmd = _cmdline(pid)
    if not cmd or not command:
        return True
    names = {Path(cmd[0].split(" ")[0]).name, Path(sys.executable).name}
    return any(Path(word).name in names for word in command)


# --- the supervisor ------------------------------------------------------------------------------


class Supervisor:
    """Runs a plan in the foreground: spawn all, restart the ones that exit, stop all on SIGTERM."""

    def __init__(self, root_dir: Path, specs: list[ProcessSpec], facts: dict[str, Any] | None = None,
                 poll_s: float = 0.2) -> None:
        self.root, self.specs, self.facts, self.poll_s = Path(root_dir), specs, facts or {}, poll_s
        self.procs: dict[str, subprocess.Popen[bytes] | None] = {}
        self.restarts: dict[str, int] = {s.name: 0 for s in specs}
        self._started_at: dict[str, float] = {}
        self._crash_loop: dict[str, int] = {s.name: 0 for s in specs}  # quick deaths in a row
        self._stopping = False

    def _write_state(self) -> None:
        procs = [
            {"name": s.name, "pid": p.pid if (p := self.procs.get(s.name)) else None, "queues": s.queues,
             "command": s.command, "port": s.port, "restarts": self.restarts[s.name]}
            for s in self.specs
        ]
        _write_json(self.root / STATE_FILE, {"supervisor": {"pid": os.getpid()}, "processes": procs,
                                              "facts": self.facts})

    def _restart_delay(self, name: str, ran_s: float) -> float:
        """Seconds to wait before restarting `name`, dead after running `ran_s`: none after a run of
        RESTART_RESET_S or more, else one more RESTART_BACKOFF_S for each quick death in a row (at most 5)."""
        self._crash_loop[name] = 0 if ran_s >= RESTART_RESET_S else self._crash_loop[name] + 1
        return RESTART_BACKOFF_S * min(self._crash_loop[name], 5)

    def _start(self, spec: ProcessSpec) -> None:
        self._started_at[spec.name] = time.monotonic()
        try:
            self.procs[spec.name] = spawn(spec, self.root / "logs")
        except OSError as e:  # e.g. binary missing: record it, retry on the next restart tick
            logger.error("cannot start %s: %s", spec.name, e)
            self.procs[spec.name] = None

    def run(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: setattr(self, "_stopping", True))
        signal.signal(signal.SIGINT, lambda *_: setattr(self, "_stopping", True))
        for spec in self.specs:
            self._start(spec)
        self._write_state()
        died_at: dict[str, tuple[float, float]] = {}  # name -> (when its death was seen, restart delay)
        while not self._stopping:
            changed = False
            for spec in self.specs:
                proc = self.procs.get(spec.name)
                if proc is not None and proc.poll() is None:
                    continue
                if not spec.restart:
                    continue
                now = time.monotonic()
                if spec.name not in died_at:
                    ran_s = now - self._started_at.get(spec.name, now)
                    died_at[spec.name] = (now, self._restart_delay(spec.name, ran_s))
                first_seen, delay = died_at[spec.name]
                if now - first_seen >= delay:
                    logger.warning("%s exited (%s); restarting", spec.name, proc and proc.returncode)
                    self._start(spec)
                    self.restarts[spec.name] += 1
                    died_at.pop(spec.name)
                    changed = True
            if changed:
                self._write_state()
            time.sleep(self.poll_s)
        self.stop()

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM every child at once (clients first), SIGKILL what is left after `grace_s`."""
        live = [p for s in reversed(self.specs) if (p := self.procs.get(s.name)) is not None and p.poll() is None]
        for proc in live:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while any(p.poll() is None for p in live) and time.monotonic() < deadline:
            time.sleep(0.05)
        for proc in live:
            if proc.poll() is None:
                terminate(proc.pid, grace_s=0.0, reap=proc.poll)
        self._write_state()


# --- the CLI-facing functions --------------------------------------------------------------------


def stack_status(root_dir: Path) -> list[ProcessInfo]:
    """The supervisor and every planned process, with whether each is alive now."""
    state = _read_json(Path(root_dir) / STATE_FILE)
    if not state:
        return []
    sup = state.get("supervisor", {}).get("pid")
    out = [ProcessInfo(SUPERVISOR, sup, [], bool(sup) and pid_alive(sup))]
    for p in state.get("processes", []):
        out.append(ProcessInfo(p["name"], p["pid"], p["queues"], _is_ours(p["pid"], p["command"]),
                               p["command"], p.get("port"), p.get("restarts", 0)))
    return out


def stack_facts(root_dir: Path) -> dict[str, Any]:
    """Where the stack's Redis, S3 (with credentials) and API are."""
    return _read_json(Path(root_dir) / STATE_FILE).get("facts", {})


def stack_health(root_dir: Path) -> list[ServiceHealth]:
    """Each service of the stack in `root_dir`, probed now: Redis PING, an S3 round trip, the API's
    /healthz, a consumer on every queue, and liveness for processes no probe covers."""
    root = Path(root_dir)
    return probe_stack(root, stack_status(root), stack_facts(root), QUEUES)


def stack_wait(root_dir: Path, timeout_s: float) -> list[ServiceHealth]:
    """Return once every service is healthy; `StackNotReady` names the others and their logs."""
    return wait_healthy(lambda: stack_health(root_dir), timeout_s)


def stack_up(settings: Settings, root_dir: Path, specs: list[ProcessSpec] | None = None,
             timeout_s: float = 30.0) -> list[ProcessInfo]:
    """Start the stack under a detached supervisor unless one is already running; returns status.

    `specs` replaces the default plan (tests use dummy commands).
    """
    root = Path(root_dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    current = stack_status(root)
    if current and current[0].alive:
        return current
    facts: dict[str, Any] = {}
    if specs is None:
        specs, facts = default_specs(settings, root)
    _write_json(root / PLAN_FILE, {"specs": [asdict(s) for s in specs], "facts": facts})
    (root / STATE_FILE).unlink(missing_ok=True)
    (root / "logs").mkdir(exist_ok=True)
    with open(root / "logs" / "supervisor.log", "ab") as log:
        sup = subprocess.Popen([sys.executable, "-m", "devstack.stack", "supervise", str(root)],
                               stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                               start_new_session=True, cwd=Path(__file__).resolve().parent.parent)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = stack_status(root)
        if status and status[0].pid == sup.pid:
            return status
        if sup.poll() is not None:
            raise RuntimeError(f"supervisor exited with {sup.returncode}; see {root / 'logs' / 'supervisor.log'}")
        time.sleep(0.1)
    raise TimeoutError(f"supervisor did not report within {timeout_s}s")


def stack_down(root_dir: Path, grace_s: float = 15.0) -> list[ProcessInfo]:
    """Stop the supervisor (which stops its children), then any recorded child still alive."""
    root = Path(root_dir)
    status = stack_status(root)
    if not status:
        return []
    sup = status[0]
    if sup.alive and sup.pid:
        terminate(sup.pid, grace_s=grace_s)
    for p in stack_status(root)[1:]:
        if p.alive and p.pid:
            terminate(p.pid, grace_s=5.0)
    return stack_status(root)


def stack_kill(root_dir: Path) -> None:
    """Tear down a throwaway stack (a test's, a bench's) without waiting for clean stops: the
    supervisor first (so nothing restarts), then every process it recorded, all at once: SIGTERM
    to each process group, SIGKILL to those still alive KILL_GRACE_S later. `stack_down` is for
    real stacks; on a throwaway one its graceful stop costs ~10 s, mostly SeaweedFS's, and one
    grace per process in turn cost ~4 s a stack."""
    status = stack_status(root_dir)  # the supervisor is listed first
    if status and status[0].alive and status[0].pid:
        terminate(status[0].pid, grace_s=0.0)  # SIGKILL at once: it must be gone before the rest
    terminate_all([p.pid for p in status[1:] if p.alive and p.pid], KILL_GRACE_S)


def _main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "supervise":
        print("usage: python -m devstack.stack supervise ROOT", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    root = Path(argv[1])
    plan = _read_json(root / PLAN_FILE)
    Supervisor(root, [_spec_from(s) for s in plan.get("specs", [])], plan.get("facts")).run()
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
