"""Predictions shared among torchrun's processes. `write_predictions` writes the rows of many image files
to one CSV or JSON file (or standard output) as their batches finish, so memory stays flat in the number
of files: under torchrun each process predicts a contiguous share of the files into a part beside the
file, and the first joins the parts in input order. `predict` is predictor.predict with the files shared
the same way and every process given all the answers."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from ..devices import Ranks
from ..errors import ConfigError
from . import predictor
from .writers import PredictionFormat, join_parts, write_stream


@dataclass
class Written:
    n: int  # rows written, by every process
    skipped: list[tuple[str, str]]  # (path, why) of this process's files that could not be read


def write_predictions(m, paths: list, output: str | None, *, ranks: Ranks | None = None, reporter=None,
                      on_rows=None, **options) -> Written:
    """The answers for the image files under `paths` (see predictor.predict, whose top_k, tta and
    min_confidence `options` are) written to `output` (.csv or .json; None: CSV on standard output,
    flushed batch by batch). `on_rows(rows)` sees each batch as it is written. Every process of `ranks`
    must call it; the file is whole when it returns."""
    ranks = ranks or Ranks()
    if ranks.active and not output:
        raise ConfigError("under torchrun, predict needs --output FILE.csv|FILE.json: each process writes "
                          "its share there and the first joins them.")
    options = {"top_k": 5, **options}
    found = predictor.stream(m, paths, reporter=reporter, share=(ranks.rank, ranks.world), **options)
    fmt = PredictionFormat(output or "stdout.csv", top_k=min(options["top_k"], len(m.classes)),
                           labels=m.classes if m.task == "multi" else None)

    def batches():
        for rows in found:
            if on_rows is not None:
                on_rows(rows)
            yield rows

    if not output:
        sys.stdout.write(fmt.head())
        n = fmt.body(batches(), lambda text: (sys.stdout.write(text), sys.stdout.flush()))
        sys.stdout.write(fmt.tail(n > 0))
    elif ranks.active:
        parts = [_part(output, r, ranks.world) for r in range(ranks.world)]
        n = write_stream(parts[ranks.rank], fmt, batches(), body_only=True)
        counts = [int(c) for c in ranks.gather(n)]  # also the barrier: every part is written
        if ranks.main:
            join_parts(output, fmt, parts, counts)
        n = sum(counts)
    else:
        n = write_stream(output, fmt, batches())
    ranks.barrier()
    return Written(n, list(found.skipped))


def _part(output: str, rank: int, world: int) -> Path:
    out = Path(output)
    return out.parent / f".{out.name}.part-{rank}-of-{world}"


def predict(m, inputs, *, ranks: Ranks | None = None, top_k: int = 5, tta: bool = False,
            min_confidence: float | None = None, reporter=None) -> predictor.Predictions:
    """predictor.predict with the image files shared among the processes of `ranks` (contiguous shares,
    as write_predictions shares them) and every process given every answer, in the order of `inputs`.
    Every process of `ranks` must call it."""
    ranks = ranks or Ranks()
    options = {"top_k": top_k, "tta": tta, "min_confidence": min_confidence}
    if not ranks.active:
        return predictor.predict(m, inputs, reporter=reporter, **options)
    inputs = predictor.as_inputs(inputs)
    found = predictor.stream(m, [x for x in inputs if predictor.is_path(x)], reporter=reporter,
                             share=(ranks.rank, ranks.world), **options)
    mine = [(i, r) for origins, rows in found.batches() for i, r in zip(origins, rows)]
    answers, skipped = [], {}
    for part, part_skipped in ranks.gather((mine, found.skipped)):  # shares in rank order: the files' order
        answers += part
        skipped.update(dict.fromkeys(map(tuple, part_skipped)))  # each process lists the missing paths
    return predictor.assembled(m, inputs, answers, list(skipped), **options)
