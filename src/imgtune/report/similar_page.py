"""similar.html: each query image of `imgtune similar` beside its nearest images in the index, with
their cosine similarities."""

from __future__ import annotations

import os

from .html import cards, gallery, page, section, tile

SHOWN_QUERIES = 100  # each query is k + 1 inlined thumbnails; the CSV has them all


def build_similar_page(result: dict, run: str) -> str:
    queries = result["queries"]
    top = cards([(f"{len(queries):,}", "query images", ""),
                 (f"{result['n_index']:,}", "images in the index", ""),
                 (f"{result['k']:,}", "neighbours asked for each", ""),
                 (f"{len(result['skipped']):,}", "files skipped", "bad" if result["skipped"] else "")])
    body = [top]
    for q in queries[:SHOWN_QUERIES]:
        tiles = [tile(q["path"], [("query", "t")])]
        tiles += [tile(n["path"], [(f"#{n['rank']}: similarity {n['similarity']:.3f}", "w"),
                                   (n["label"] if n["label"] is not None else "no label", "")])
                  for n in q["neighbours"]]
        body.append(section(os.path.basename(q["path"]), gallery(tiles)))
    more = f" The first {SHOWN_QUERIES:,} queries are shown; the CSV lists all." if len(queries) > SHOWN_QUERIES else ""
    body.insert(1, f"<p class=\"note\">Cosine similarity of the run's backbone features (1: the same features, "
                   f"as for a copy of the image; searched {result['method']}). Each query comes first, then its "
                   f"neighbours, nearest first.{more}</p>")
    return page("imgtune: similar images", f"Run {run}, index {result['index']}: {result['k']} nearest of "
                                           f"{result['n_index']:,} images for {len(queries):,} queries.",
                "\n".join(body))
