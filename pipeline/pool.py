"""A stage's shards on a fixed set of Ray actors (a model loaded once per actor), through Ray's
own ``ray.util.ActorPool``: it hands each shard to an idle actor and keeps the rest queued on the
driver until one frees up.

What is added here is what the runner needs from an executor and the pool does not give: which
shard a result belongs to (results come back in the order they finish) and a shard failure, not
an exception, when an actor dies under its shard. An actor that died is handed back to the pool:
Ray restarts it (``max_restarts``) and it takes the next shard; one that is gone for good fails
each later shard at once with Ray's reason, as a plain Ray task on a dead worker would.
"""

from __future__ import annotations

from typing import Any

from pipeline.stage import ShardTask, TaskOutcome


class ShardActorPool:
    """``submit(task) -> shard id``, ``next_done() -> [(shard id, TaskOutcome)]``, ``close()``
    over actors whose ``process(task)`` returns the ``TaskOutcome`` of ``execute``."""

    def __init__(self, actors: list[Any]):
        from ray.util import ActorPool

        self.actors = list(actors)
        self._pool = ActorPool(self.actors)
        self._running: dict[Any, str] = {}  # ObjectRef -> shard id, from dispatch to result

    def _dispatch(self, actor: Any, task: ShardTask) -> Any:
        ref = actor.process.remote(task)
        self._running[ref] = task.shard_id
        return ref

    def submit(self, task: ShardTask) -> str:
        self._pool.submit(self._dispatch, task)
        return task.shard_id

    def next_done(self) -> list[tuple[str, TaskOutcome]]:
        """Wait for the next shard to finish (any actor)."""
        try:
            outcome = self._pool.get_next_unordered()
        except Exception as exc:  # noqa: BLE001 - ActorDiedError...: that shard failed
            error = f"{type(exc).__name__}: {exc}"
            done = [(self._failed_shard(), TaskOutcome(ok=False, error=error))]
            for actor in self.actors:  # the pool drops a dead actor; Ray may restart it
                try:
                    self._pool.push(actor)
                except ValueError:
                    pass  # still in the pool (idle or busy)
            return done
        if not isinstance(outcome, TaskOutcome) or outcome.shard_id is None:
            raise TypeError(f"pool actors must return execute()'s TaskOutcome, got {outcome!r}")
        self._forget(outcome.shard_id)
        return [(outcome.shard_id, outcome)]

    def _forget(self, shard_id: str) -> None:
        self._running = {r: s for r, s in self._running.items() if s != shard_id}

    def _failed_shard(self) -> str:
        """The shard whose result raised: a finished one that raises (the pool does not say
        which one it was; if two failed together, either is this one, the other comes next)."""
        import ray

        ready, _ = ray.wait(list(self._running), num_returns=len(self._running), timeout=0)
        for ref in ready:
            try:
                ray.get(ref)
            except Exception:  # noqa: BLE001 - this is the one
                shard_id = self._running[ref]
                self._forget(shard_id)
                return shard_id
        raise RuntimeError("an actor pool result failed but no finished shard raises")

    def close(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor)
        self.actors = []
