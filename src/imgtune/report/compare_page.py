"""compare.html: two runs on the same images: the verdict, overall and per-class differences with their
intervals, and the images that changed from wrong to right and from right to wrong."""

from __future__ import annotations

from .html import cards, esc, gallery, page, section, table, tile

SHOWN_FLIPS = 60


def _points(d: dict) -> str:
    return f"{d['difference'] * 100:+.1f} ± {d['interval'] * 100:.1f}"


def build_compare_page(doc: dict) -> str:
    o = doc["overall"]
    fixed, broken = doc["wrong_to_right"], doc["right_to_wrong"]
    top = cards([(f"{o['accuracy']['a']:.4f} → {o['accuracy']['b']:.4f}", "accuracy, A → B", ""),
                 (f"{o['macro_f1']['a']:.4f} → {o['macro_f1']['b']:.4f}", "macro-F1, A → B", ""),
                 (f"{len(fixed):,}", "wrong → right", ""),
                 (f"{len(broken):,}", "right → wrong", "bad" if len(broken) > len(fixed) else "")])
    rows = [[c, d["support"], f"{d['recall']['a']:.3f}", f"{d['recall']['b']:.3f}", _points(d["recall"]),
             _points(d["precision"]), _points(d["f1"])] for c, d in doc["per_class"].items()]
    rows.append(["overall", doc["n_images"], f"{o['accuracy']['a']:.3f}", f"{o['accuracy']['b']:.3f}",
                 _points(o["accuracy"]), "", f"{_points(o['macro_f1'])} (macro)"])
    body = [top, section("Verdict", f"<p>{esc(doc['verdict'])}</p>"),
            section("Per class", table(["class", "images", "accuracy A", "accuracy B", "accuracy B - A (points)",
                                        "precision B - A", "F1 B - A"], rows),
                    note="Each difference with the half-width of its 95 % interval, from a paired bootstrap of "
                         f"the images ({doc['bootstrap_rounds']:,} resamples, both runs judged on each resample "
                         "together). A difference inside its interval is noise.")]
    for title, flips in (("Wrong → right", fixed), ("Right → wrong", broken)):
        if flips:
            shown = [tile(f["path"], [(f"true {f['true']}", "w"), (f"A: {f['a']}, B: {f['b']}", "")])
                     for f in flips[:SHOWN_FLIPS]]
            more = f" The first {SHOWN_FLIPS} of {len(flips):,} are shown." if len(flips) > SHOWN_FLIPS else ""
            body.append(section(f"{title} ({len(flips):,})", gallery(shown), note=more))
    return page("imgtune: compare two runs", f"A: {doc['a']} · B: {doc['b']} · {doc['n_images']:,} images "
                                             f"({doc['images']})", "\n".join(body))
