"""The Ray Data pipeline: files -> read tasks -> scoring actors -> one Parquet file written by the driver.

    items (one per file) --read (0 CPU)--> blocks of rows --ScoreActor x N (1 CPU each)--> driver --> Parquet

Each actor holds one RowScorer: one onnxruntime session per graph, single-threaded by default, so
N actors keep N cores busy. An actor's batch is sized by draws (rows x draws per row), so a K=1 run
moves large batches and an IWAE(1000) run small ones. The driver receives the results in order
(preserve_order) and writes them to one Parquet file on its own machine, counting the summary's
statistics as it goes: results are small beside the inputs, and the output never depends on which
node ran what.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import ray.data
from tqdm import tqdm

from vaeserve.api.manifest import Manifest
from vaeserve.batch.cluster import BatchError, Cluster, connect
from vaeserve.batch.inputs import DataFileError, InputFile, read_rows
from vaeserve.batch.scoring import DRAWS_PER_BATCH, RowScorer, ScoreSpec, batch_rows, row_seeds
from vaeserve.batch.summary import RunSummary, column_stats
from vaeserve.batch.terminal import ray_data_logs, without_ray_core_lines
from vaeserve.server.errors import InvalidArgument

__all__ = ["ScoreActor", "run"]

_WRITE_ROWS = 65_536  # rows per Parquet row group, whatever the batch size
_FLAT_ROW = re.compile(r"\bx\[([\d, ]+)\]")


class ScoreActor:
    """One RowScorer per actor, built once; each call scores a block of rows with their own seeds."""

    def __init__(self, bundle: str, spec: ScoreSpec, threads: int) -> None:
        self.scorer = RowScorer(Path(bundle), threads=threads)
        self.spec = spec

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        seeds = row_seeds(self.spec.seed, batch["global_index"])
        try:
            columns = self.scorer.score(batch["x"], seeds, self.spec)
        except InvalidArgument as exc:  # say which rows, in the user's terms
            raise DataFileError(_locate(str(exc), batch)) from None
        keys = {name: batch[name] for name in ("file", "index", "global_index")}
        return {**keys, "seed": seeds, **columns}


def run(
    plan: list[InputFile],
    scorer: RowScorer,
    spec: ScoreSpec,
    out: Path,
    cluster: Cluster,
    *,
    draws: int = DRAWS_PER_BATCH,
    progress: bool | None = None,
    verbose: bool = False,
) -> RunSummary:
    """Scores every row of the plan on Ray and writes `out`; progress=None shows a bar on a terminal. Ray's
    own log lines reach the terminal only when verbose (they are in the session's log directory)."""
    with ray_data_logs(verbose):
        started_here = connect(cluster, verbose=verbose)
        try:
            actors = cluster.actor_count()
            total = sum(item.rows for item in plan)
            rows = batch_rows(spec, scorer.manifest, total, actors, draws)
            schema = _schema(scorer, spec)
            dataset = _dataset(plan, scorer.engine.bundle.path, spec, scorer.manifest, actors, rows, cluster, verbose)
            summary = RunSummary(
                model=f"{scorer.manifest.name}:{scorer.manifest.version}",
                spec=spec,
                out=str(out),
                files=len(plan),
                actors=actors,
                batch_rows=rows,
                columns=column_stats(schema, spec),
            )
            _write(dataset, plan, schema, out, summary, total, progress, quiet=not verbose)
            summary.finish()
            return summary
        finally:
            if started_here:
                ray.shutdown()


def _schema(scorer: RowScorer, spec: ScoreSpec) -> pa.Schema:
    m = scorer.manifest
    return scorer.schema(spec).with_metadata(
        {
            "vaeserve.model": f"{m.name}:{m.version}",
            "vaeserve.k": str(spec.k),
            "vaeserve.seed": str(spec.seed),
            "vaeserve.seed_rule": "row seed = (seed + global_index) mod 2**64",
            "vaeserve.alpha": repr(spec.alpha),
            "vaeserve.anomaly_scores": ",".join(spec.anomaly_scores),
        }
    )


def _read(
    batch: dict[str, np.ndarray], plan: list[InputFile], manifest: Manifest, rows: int
) -> Iterator[dict[str, np.ndarray]]:
    """A file's rows in blocks of `rows`, each row with its file, its index in the file and its global index."""
    for file in batch["file"]:
        item = plan[int(file)]
        x = read_rows(item, manifest)
        for start in range(0, item.rows, rows):
            index = np.arange(start, min(start + rows, item.rows), dtype=np.int64)
            yield {
                "file": np.full(len(index), file),
                "index": index,
                "global_index": index + item.offset,
                "x": x[index],
            }


def _dataset(
    plan: list[InputFile],
    bundle: Path,
    spec: ScoreSpec,
    manifest: Manifest,
    actors: int,
    rows: int,
    cluster: Cluster,
    verbose: bool,
) -> ray.data.Dataset:
    items = ray.data.from_items([{"file": i} for i in range(len(plan))], override_num_blocks=len(plan))
    # This run's settings, on its own copy of Ray Data's context: results in input order, and each block the
    # read yields (one batch: rows x (D inputs + 3 keys) x 8 bytes) a block of its own, which is what spreads
    # a file's rows over the actors (Ray Data makes blocks of up to this many bytes; 80% keeps one batch whole).
    items.context.execution_options.preserve_order = True
    items.context.enable_progress_bars = False  # ours counts rows
    items.context.print_on_execution_start = verbose
    items.context.target_max_block_size = int(0.8 * rows * 8 * (manifest.dim + 3))
    # Reading takes no CPU of its own: every CPU is an actor's, and a read waits on the disk more than on a core.
    blocks = items.map_batches(partial(_read, plan=plan, manifest=manifest, rows=rows), batch_size=1, num_cpus=0)
    return blocks.map_batches(
        ScoreActor,
        fn_constructor_kwargs={"bundle": str(bundle.resolve()), "spec": spec, "threads": cluster.threads},
        batch_size=rows,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=cluster.threads,
    )


def _write(
    dataset: ray.data.Dataset,
    plan: list[InputFile],
    schema: pa.Schema,
    out: Path,
    summary: RunSummary,
    total: int,
    progress: bool | None,
    *,
    quiet: bool,
) -> None:
    """Streams the results, in order, into out (renamed into place when complete)."""
    sources = np.array([str(item.path) for item in plan], dtype=object)
    unfinished = out.with_name(out.name + ".partial")
    bar = tqdm(total=total, unit="rows", desc="scoring", disable=None if progress is None else not progress)
    pending: list[pa.Table] = []
    try:
        with pq.ParquetWriter(unfinished, schema) as writer:
            for batch in _results(dataset, quiet):
                columns = {**batch, "source": sources[batch["file"]]}
                summary.add(columns)
                pending.append(pa.table({f.name: pa.array(columns[f.name], f.type) for f in schema}, schema=schema))
                if sum(len(t) for t in pending) >= _WRITE_ROWS:
                    writer.write_table(pa.concat_tables(pending))
                    pending.clear()
                bar.update(len(batch["file"]))
            if pending:
                writer.write_table(pa.concat_tables(pending))
        os.replace(unfinished, out)
    finally:
        bar.close()
        unfinished.unlink(missing_ok=True)


def _results(dataset: ray.data.Dataset, quiet: bool) -> Iterator[dict[str, np.ndarray]]:
    """The dataset's blocks as they come, with a failure in a task raised as its user-facing message. Quiet,
    Ray's C++ log lines are kept off stderr until the first block: by then the actor pool has started."""
    try:
        batches = iter(dataset.iter_batches(batch_size=None, batch_format="numpy"))
        with without_ray_core_lines(quiet):
            first = next(batches, None)
        if first is not None:
            yield first
            yield from batches
    except Exception as exc:  # Ray wraps a task's error; find ours inside
        cause = _cause(exc)
        if cause is None:
            raise
        raise BatchError(str(cause).splitlines()[0]) from None  # Ray appends its retry advice


def _cause(exc: BaseException) -> BaseException | None:
    """Our DataFileError or InvalidArgument inside Ray's wrappers (a RayTaskError keeps it as `cause`)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        inner = getattr(current, "cause", None)
        if isinstance(inner, BaseException):
            current = inner
        elif isinstance(current, (DataFileError, InvalidArgument)):
            return current
        else:
            current = current.__cause__ or current.__context__
    return None


def _locate(message: str, batch: dict[str, np.ndarray]) -> str:
    """The engine names rows by their place in its batch (x[3]); say their global index instead."""

    def rows(match: re.Match[str]) -> str:
        places = [int(i) for i in match.group(1).split(",")]
        return "rows with global_index " + ", ".join(str(int(batch["global_index"][i])) for i in places)

    return _FLAT_ROW.sub(rows, message)
