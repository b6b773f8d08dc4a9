"""vaeserve.batch: bulk scoring of files on Ray Data with the server's engine (`vaeserve-batch score`).

    from vaeserve.batch import Cluster, RowScorer, plan_inputs
    from vaeserve.batch.pipeline import run     # imports Ray

    scorer = RowScorer(Path("models/digits"))
    spec = scorer.spec(k=1000, seed=0)            # the server's defaults for what is left out
    plan = plan_inputs([Path("shards/")], scorer.manifest)
    summary = run(plan, scorer, spec, Path("scores.parquet"), Cluster(address="auto"))

Row i of the whole input (files in the order given) is scored with seed (seed + i) mod 2**64: its numbers
are those of a Score request of that row alone with that seed and K. This package imports no Ray; the
pipeline module does, so a local instance can be kept on loopback (`loopback_only`) before it is imported.
"""

from vaeserve.batch.cluster import BatchError, Cluster, loopback_only
from vaeserve.batch.inputs import DataFileError, InputFile, plan_inputs, read_rows
from vaeserve.batch.scoring import RowScorer, ScoreSpec, batch_rows, row_seeds

__all__ = [
    "BatchError",
    "Cluster",
    "DataFileError",
    "InputFile",
    "RowScorer",
    "ScoreSpec",
    "batch_rows",
    "loopback_only",
    "plan_inputs",
    "read_rows",
    "row_seeds",
]
