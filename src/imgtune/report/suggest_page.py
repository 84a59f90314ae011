"""suggest.html: the images `imgtune suggest` chose, best first, with why, and the near-duplicates it
left out."""

from __future__ import annotations

from .html import cards, gallery, page, section, tile

SHOWN_DUPLICATES = 60


def build_suggest_page(result: dict, run: str) -> str:
    rows, dupes = result["rows"], result["duplicates"]
    top = cards([(f"{len(rows):,}", "images to label next", ""),
                 (f"{result['n_candidates']:,}", "unlabelled images ranked", ""),
                 (f"{len(dupes):,}", "near-duplicates left out", "bad" if dupes else ""),
                 (f"{result['n_labelled']:,}", "labelled images (the run's)", "")])
    tiles = [tile(r["path"], [(f"#{r['rank']}: {r['predicted']} {r['probability']:.2f} / {r['second']} "
                               f"{r['probability_second']:.2f}", "w"),
                              (f"uncertainty {r['uncertainty']:.2f}, distance {r['distance']:.2f}", "")])
             for r in rows]
    body = [top, section("Label these next", gallery(tiles),
                         note=f"Best first. Uncertainty: {result['uncertainty']} of the run's calibrated probabilities "
                              "(1: a toss-up). Distance: 1 - cosine similarity of the backbone's features to the "
                              "nearest labelled or earlier-chosen image; each pick maximises uncertainty x distance "
                              "among the most uncertain images, so the batch is not one confusion many times.")]
    if dupes:
        shown = [tile(d["path"], [(f"copy of a {'labelled' if d['of'] == 'labelled' else 'chosen'} image", "w"),
                                  (d["duplicates"], "")]) for d in dupes[:SHOWN_DUPLICATES]]
        more = f" The first {SHOWN_DUPLICATES} are shown." if len(dupes) > SHOWN_DUPLICATES else ""
        body.append(section("Left out: near-duplicates", gallery(shown),
                             note="Perceptual hashes within 2 of 64 bits of a labelled image's or of one chosen "
                                  f"above (resized or re-encoded copies): labelling them would add little.{more}"))
    return page("imgtune: images to label next", f"Run {run}: {len(rows):,} of {result['n_candidates']:,} "
                                                 "unlabelled images.", "\n".join(body))
