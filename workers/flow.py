"""A job's life in one place: its units of work, the fan-ins between them, and what to enqueue
after each event. Pure (no Redis, torch or Celery): the stages report events, and
`stages.common.advance` enqueues what `JobFlow` says, behind the event's fan-in when it has one.

Per epoch e (sampled by policy version e, the job's published version):

  JobStarted, Trained(e-1)  --[epoch-start-e: once]----------> sample(e, p, b) for every prompt p, batch b
  Sampled(e, p, b)          ---------------------------------> score(e, p, b)
  Scored(e, p, b)           --[scored-e{e}-p{p}: its batches]--> fuse(e, p, c) for every chunk c
  Fused(e, p, c)            ---------------------------------> score_targets(e, p, c)   (D-Fusion targets)
  TargetsScored(e, p, c),
  Fused(e, p, c) if plain   --[pairs-scored-e{e}: every chunk of every prompt]--> train(e)
  Trained(e)                publishes version e+1; then epoch e+1 (as above) or the job's end

A fan-in fires once (`JobStore.mark_done`); its completer enqueues, then confirms under
`sent_scope(scope)`, so a redelivered member re-enqueues only an unconfirmed fan-in.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from services.queue import FUSE, SAMPLE, SCORE, SCORE_TARGETS, START_JOB, TRAIN
from workers.keys import prompt_unit, train_unit

if TYPE_CHECKING:
    from services.jobspec import JobSpec

# Fan-in scopes (the names JobStore.mark_done counts members under).
EPOCH_START = "epoch-start-{epoch}"  # the epoch's one start -> every sample batch
SCORED = "scored-{unit}"  # every sample batch of a prompt scored -> its fuse chunks
PAIRS_SCORED = "pairs-scored-e{epoch}"  # every chunk of every prompt has target-scored pairs -> train(e)
TRAINED = "trained-{unit}"  # train(e)'s commit: its optimizer steps are counted once
SENT = "{scope}-sent"  # a fan-in's completer has enqueued what follows it


def sent_scope(scope: str) -> str:
    return SENT.format(scope=scope)


#: Task kwargs that name a unit, in the order they appear in its name (job_id names the job).
UNIT_ARGS = (("epoch", "e"), ("prompt", "p"), ("batch", "b"), ("chunk", "c"))
#: Task kwargs that name a unit by an id, appended as they are: `compare-<id>` (not a unit of the flow).
UNIT_IDS = ("compare_id",)


def unit_of(task_name: str, kwargs: dict[str, Any]) -> str:
    """The unit a task computes: `sample-e0-p1-b2` for dfusion.sample(epoch=0, prompt=1, batch=2)."""
    parts = [task_name.removeprefix("dfusion.")]
    parts += [f"{short}{int(kwargs[arg])}" for arg, short in UNIT_ARGS if arg in kwargs]
    parts += [str(kwargs[arg]) for arg in UNIT_IDS if arg in kwargs]
    return "-".join(parts)


# --- events: what a stage reports when it has stored its outputs -------------------------------
@dataclass(frozen=True)
class JobStarted:
    pass


@dataclass(frozen=True)
class Sampled:
    epoch: int
    prompt: int
    batch: int


@dataclass(frozen=True)
class Scored:
    epoch: int
    prompt: int
    batch: int


@dataclass(frozen=True)
class Fused:
    epoch: int
    prompt: int
    chunk: int


@dataclass(frozen=True)
class TargetsScored:
    epoch: int
    prompt: int
    chunk: int


@dataclass(frozen=True)
class Trained:
    epoch: int


Event = JobStarted | Sampled | Scored | Fused | TargetsScored | Trained


@dataclass(frozen=True)
class TaskRef:
    """A task to enqueue: its name (services.queue) and its payload besides the job id."""

    name: str
    epoch: int | None = None  # None only for start_job
    prompt: int | None = None
    batch: int | None = None
    chunk: int | None = None

    def kwargs(self) -> dict[str, int]:
        return {k: v for k, v in asdict(self).items() if k != "name" and v is not None}

    @property
    def unit(self) -> str:
        return unit_of(self.name, self.kwargs())


#: The task the API enqueues for a new job: the flow's root.
START = TaskRef(START_JOB)


@dataclass(frozen=True)
class FanIn:
    """`member` of `scope`, which completes when `expected` distinct members have reported."""

    scope: str
    member: str
    expected: int


def train_commit(epoch: int) -> FanIn:
    """train(epoch)'s commit: its optimizer steps count once, whatever the deliveries."""
    return FanIn(TRAINED.format(unit=train_unit(epoch)), "commit", 1)


def completed(task: TaskRef) -> Event:
    """The event a task reports when it finishes."""
    e, p = task.epoch, task.prompt
    if task.name == START_JOB:
        return JobStarted()
    assert e is not None, task
    if task.name == TRAIN:
        return Trained(e)
    assert p is not None, task
    if task.name in (SAMPLE, SCORE):
        assert task.batch is not None, task
        return (Sampled if task.name == SAMPLE else Scored)(e, p, task.batch)
    assert task.chunk is not None and task.name in (FUSE, SCORE_TARGETS), task
    return (Fused if task.name == FUSE else TargetsScored)(e, p, task.chunk)


# --- the state machine -------------------------------------------------------------------------
@dataclass(frozen=True)
class JobFlow:
    """The units of one job and the transitions between them."""

    epochs: int
    prompts: int
    samples_per_prompt: int
    pairs_per_prompt: int  # dfusion_core.pairs.pairs_per_prompt(samples_per_prompt)
    batch_size: int  # samples per sample/score task, pairs per fuse/score_targets task
    plain: bool  # plain pairs: the winner is a scored sample, so no score_targets

    @classmethod
    def of(cls, spec: JobSpec) -> JobFlow:
        n = spec.expected_counts()
        return cls(n.epochs, n.prompts, n.samples_per_prompt, n.pairs_per_prompt, spec.sampling.batch_size,
                   spec.training.pairs == "plain")

    # units
    @property
    def batches(self) -> int:
        """Sample (and score) tasks per prompt."""
        return -(-self.samples_per_prompt // self.batch_size)

    @property
    def chunks(self) -> int:
        """Fuse (and score_targets) tasks per prompt."""
        return -(-self.pairs_per_prompt // self.batch_size)

    def sample_range(self, batch: int) -> range:
        """Sample indices (within a prompt) of sample / score batch `batch`."""
        return range(batch * self.batch_size, min((batch + 1) * self.batch_size, self.samples_per_prompt))

    def chunk_range(self, chunk: int) -> range:
        """Pair indices (within a prompt) of fuse / score_targets chunk `chunk`."""
        return range(chunk * self.batch_size, min((chunk + 1) * self.batch_size, self.pairs_per_prompt))

    # transitions
    def gate(self, event: Event) -> FanIn | None:
        """The fan-in `event` is a member of; what follows it is enqueued once that completes."""
        match event:
            case JobStarted():
                return FanIn(EPOCH_START.format(epoch=0), "go", 1)
            case Trained(epoch=e) if e + 1 < self.epochs:
                return FanIn(EPOCH_START.format(epoch=e + 1), "go", 1)
            case Scored(e, p, b):
                return FanIn(SCORED.format(unit=prompt_unit(e, p)), f"b{b}", self.batches)
            case TargetsScored(e, p, c):
                return self._pairs_scored(e, p, c)
            case Fused(e, p, c) if self.plain:  # the winner is a scored sample: its pairs are scored
                return self._pairs_scored(e, p, c)
        return None

    def next_tasks(self, event: Event) -> list[TaskRef]:
        """What to enqueue after `event` (after its `gate` completes, when it has one)."""
        match event:
            case JobStarted():
                return self._epoch(0)
            case Trained(epoch=e):
                return self._epoch(e + 1) if e + 1 < self.epochs else []
            case Sampled(e, p, b):
                return [TaskRef(SCORE, e, p, batch=b)]
            case Scored(e, p, _):
                return [TaskRef(FUSE, e, p, chunk=c) for c in range(self.chunks)]
            case Fused(e, p, c) if not self.plain:
                return [TaskRef(SCORE_TARGETS, e, p, chunk=c)]
            case Fused(e, _, _) | TargetsScored(e, _, _):
                return [TaskRef(TRAIN, e)]
        raise TypeError(f"not a flow event: {event!r}")

    def outstanding(self, committed: Collection[str]) -> list[TaskRef]:
        """The tasks that the `committed` units have enqueued and that have not committed themselves.

        Each must have a message somewhere (a queue, a worker) or a running holder; one that has
        neither was lost (e.g. Redis died between a worker's BRPOP and its unacked record) and
        must be sent again. The flow is replayed from START over the committed units (a unit
        commits after it enqueued what follows it), fan-ins counted as `JobStore.mark_done` does.
        """
        members: dict[str, set[str]] = {}
        todo, out = [START], []
        while todo:
            task = todo.pop()
            if task.unit not in committed:
                out.append(task)
                continue
            event = completed(task)
            gate = self.gate(event)
            if gate is not None:
                done = members.setdefault(gate.scope, set())
                done.add(gate.member)
                if len(done) != gate.expected:
                    continue
            todo.extend(self.next_tasks(event))
        return out

    def finishes_job(self, event: Event) -> bool:
        """Whether the job succeeds with `event` (its last epoch trained)."""
        return isinstance(event, Trained) and event.epoch + 1 >= self.epochs

    def _pairs_scored(self, epoch: int, prompt: int, chunk: int) -> FanIn:
        return FanIn(PAIRS_SCORED.format(epoch=epoch), f"p{prompt}-c{chunk}", self.prompts * self.chunks)

    def _epoch(self, epoch: int) -> list[TaskRef]:
        return [TaskRef(SAMPLE, epoch, p, batch=b) for p in range(self.prompts) for b in range(self.batches)]
