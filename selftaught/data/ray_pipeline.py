"""Ray Data for the sharded stages: shards mapped over a pool of actors, one model per actor.

Ray schedules the actors over a cluster (or a local instance), restarts failed ones and streams
results back; we add only the glue. Each actor builds its shard processor once, `factory(*args)`
(that is where the model is loaded), then runs shard after shard. The driver commits every result
through `selftaught.data.shards.run_sharded` (see `ray_runner`), so the shards, the manifest and
resuming are exactly those of the single-process path.

Rows travel between driver and workers as JSON text: Arrow would otherwise infer a column schema
from arbitrary nested rows, and may reject or reshape them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from itertools import islice

import numpy as np

from selftaught.data.loading import DataError
from selftaught.data.shards import ShardRunner

ShardFactory = Callable[..., Callable[[list[dict], int], list[dict]]]


def connect(address: str | None = None) -> None:
    """Join the Ray cluster at `address`, or start a local instance; reuse one this process already has."""
    import ray

    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False)


class ShardActor:
    """One Ray actor: builds the shard processor once (loading its model), then runs shard after shard."""

    def __init__(self, factory: ShardFactory, args: tuple) -> None:
        self.process = factory(*args)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = [
            json.dumps(self.process(json.loads(rows), int(shard)))
            for shard, rows in zip(batch["shard"], batch["rows"], strict=True)
        ]
        return {"shard": batch["shard"], "rows": np.array(outputs, dtype=object)}


def ray_runner(
    factory: ShardFactory,
    args: tuple,
    actors: int = 2,
    address: str | None = None,
    gpus_per_actor: float = 0.0,
) -> ShardRunner:
    """A `run_sharded` runner: the missing shards go through `map_batches` on `actors` actors.

    `factory(*args)` must return `process(rows, shard_index)`, the same function the single-process
    path calls, so a shard's output does not depend on where it ran (the shard index seeds it).
    """

    def run(tasks: list[tuple[int, list[dict]]]) -> Iterator[tuple[int, list[dict]]]:
        if not tasks:
            return
        import ray

        connect(address)
        items = [{"shard": k, "rows": json.dumps(chunk)} for k, chunk in tasks]
        results = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
            ShardActor,
            fn_constructor_args=(factory, args),
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=min(actors, len(items))),
            num_gpus=gpus_per_actor or None,
        )
        for batch in results.iter_batches(batch_size=1, batch_format="numpy"):  # as each shard finishes
            yield int(batch["shard"][0]), json.loads(batch["rows"][0])

    return run


def apply_in_order(batch: dict[str, np.ndarray], fn: Callable) -> dict[str, np.ndarray]:
    """Run `fn` on each JSON item of a batch; a DataError comes back as data, to be raised by the driver."""
    outputs = []
    for item in batch["item"]:
        try:
            outputs.append(json.dumps({"value": fn(json.loads(item))}))
        except DataError as err:  # Ray would wrap it in its own error and lose the message's place
            outputs.append(json.dumps({"error": str(err)}))
    return {"index": batch["index"], "out": np.array(outputs, dtype=object)}


def ray_map(fn: Callable, items: Iterable, address: str | None = None, window: int = 2048) -> Iterator:
    """`map(fn, items)` on Ray tasks: lazy, `window` items at a time, results in input order.

    Items and results must be JSON-serialisable (tuples come back as lists). Lazy, so a consumer
    that stops early (a capped segment count) reads no more input than the window it is in.
    """
    import ray

    connect(address)
    iterator = iter(items)
    while chunk := list(islice(iterator, window)):
        rows = [{"index": i, "item": json.dumps(item)} for i, item in enumerate(chunk)]
        mapped = ray.data.from_items(rows).map_batches(apply_in_order, fn_args=(fn,), batch_size=64)
        for row in sorted(mapped.take_all(), key=lambda r: r["index"]):
            out = json.loads(row["out"])
            if "error" in out:
                raise DataError(out["error"])
            yield out["value"]
