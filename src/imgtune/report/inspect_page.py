"""What `imgtune inspect` shows: the console summary and inspect.html, from the audit document."""

from __future__ import annotations

from . import plots
from .html import cards, esc, figure, gallery, page, section, table, tile

SHOWN = 60  # entries per list on the page; inspect.json has them all


def summary_lines(doc: dict) -> list[str]:
    ex, near = doc["exact_duplicates"], doc["near_duplicates"]
    lines = [f"{doc['n_files']:,} files, {doc['n_usable']:,} usable images in {_n(len(doc['classes']), 'class')}; "
             f"splits: {doc['splits_from']}.",
             "Imbalance (largest/smallest class" + (", train" if "train" in doc["counts"] else "") + "): "
             + (f"{doc['imbalance_ratio']:.2f}" if doc["imbalance_ratio"] else "undefined (an empty class)"),
             f"Unreadable or not images: {len(doc['unreadable']):,}",
             f"Odd files: {len(doc['odd']):,}",
             f"Tiny (shorter side < {doc['min_side']} px): {len(doc['tiny']):,}",
             f"Exact duplicates: {len(ex):,} groups ({sum(len(g['paths']) for g in ex):,} files), "
             f"{sum(g['across_splits'] for g in ex):,} across splits, "
             f"{sum(g['conflicting_labels'] for g in ex):,} with conflicting labels",
             f"Near duplicates (perceptual hash within {doc['near_distance']} bits): {len(near):,} groups "
             f"({sum(len(g['paths']) for g in near):,} files), {sum(g['across_splits'] for g in near):,} across "
             f"splits, {sum(g['conflicting_labels'] for g in near):,} with conflicting labels",
             f"Leakage between train and val/test: {doc['leakage']['exact_duplicates']:,} exact, "
             f"{doc['leakage']['near_duplicates']:,} near-duplicate groups"]
    if doc["empty_classes"]:
        lines.append(f"Classes with no usable image: {', '.join(doc['empty_classes'])}")
    if "label_issues" in doc:
        lines.append(f"Likely label errors (given label < 0.2, another class > 0.6): {len(doc['label_issues']):,}")
    return lines


def build_inspect_page(doc: dict) -> str:
    ex, near = doc["exact_duplicates"], doc["near_duplicates"]
    leak = doc["leakage"]["exact_duplicates"] + doc["leakage"]["near_duplicates"]
    top = [(f"{doc['n_usable']:,}", "usable images", ""),
           (f"{doc['imbalance_ratio']:.2f}" if doc["imbalance_ratio"] else "n/a", "imbalance ratio",
            "bad" if not doc["imbalance_ratio"] or doc["imbalance_ratio"] >= 1.5 else ""),
           (f"{len(doc['unreadable']):,}", "unreadable", "bad" if doc["unreadable"] else "good"),
           (f"{len(doc['odd']):,}", "odd files", "bad" if doc["odd"] else "good"),
           (f"{len(doc['tiny']):,}", f"tiny (< {doc['min_side']} px)", "bad" if doc["tiny"] else "good"),
           (f"{len(ex):,}", "exact-duplicate groups", "bad" if ex else "good"),
           (f"{len(near):,}", "near-duplicate groups", "bad" if near else "good"),
           (f"{leak:,}", "groups leaking train → val/test", "bad" if leak else "good")]
    if "label_issues" in doc:
        top.append((f"{len(doc['label_issues']):,}", "likely label errors", "bad" if doc["label_issues"] else "good"))
    classes = doc["classes"]
    count_rows = [[c, *(f"{doc['counts'][s].get(c, 0):,}" for s in doc["counts"]),
                   f"{sum(doc['counts'][s].get(c, 0) for s in doc['counts']):,}"] for c in classes]
    body = [cards(top), section("Summary", "<ul>" + "".join(f"<li>{esc(x)}</li>" for x in summary_lines(doc))
                                + "</ul>")]
    body.append(section("Images per class and split", "<div class=\"row\">",
                        table(["class", *doc["counts"], "total"], count_rows),
                        figure(plots.split_counts(doc["counts"]), "images per class and split")
                        if doc["counts"] else "", "</div>"))
    if "label_issues" in doc:
        issues = doc["label_issues"][:SHOWN]
        body.append(section("Likely label errors", gallery([tile(r["path"], [
            (f"labelled {r['label']} ({r['probability_label']:.2f})", "w"),
            (f"looks like {r['predicted']} ({r['probability']:.2f})", "t"), (r["split"], "")]) for r in issues]),
            note=_more(doc["label_issues"], "Least likely label first. The model has seen its training images, "
                                            "so check these by eye before relabelling.")))
    body.append(_groups("Exact duplicates", ex, "Byte-identical files."))
    body.append(_groups("Near duplicates", near,
                        f"Perceptual hashes within {doc['near_distance']} of 64 bits: resized, re-encoded or "
                        "lightly edited copies."))
    body.append(section("Tiny images", gallery([tile(r["path"], [(f"{r['width']}x{r['height']}", "w")])
                                                for r in doc["tiny"][:SHOWN]]) if doc["tiny"] else "<p>None.</p>",
                        note=_more(doc["tiny"], f"Shorter side under {doc['min_side']} px.")))
    body.append(section("Odd files", table(["file", "why"], [[r["path"], "; ".join(r["reasons"])]
                                                              for r in doc["odd"][:SHOWN]], path_column=0)
                        if doc["odd"] else "<p>None.</p>",
                        note=_more(doc["odd"], "Usable, but worth a look.")))
    body.append(section("Unreadable files", table(["file", "reason"], [[r["path"], r["reason"]]
                                                                        for r in doc["unreadable"][:SHOWN]],
                                                  path_column=0)
                        if doc["unreadable"] else "<p>None.</p>",
                        note=_more(doc["unreadable"], "Training skips these and lists them in RUN/skipped.csv.")))
    return page(f"imgtune inspect: {doc['source']}",
                f"{doc['n_files']:,} files in {_n(len(classes), 'class')}. Nothing was modified.", "\n".join(body))


def _groups(title: str, groups: list[dict], note: str) -> str:
    if not groups:
        return section(title, "<p>None.</p>", note=note)
    rows = []
    for g in groups[:SHOWN // 3]:
        flags = (" · across splits" if g["across_splits"] else "") + (" · conflicting labels"
                                                                      if g["conflicting_labels"] else "")
        rows.append(f"<p class=\"note\">{len(g['paths'])} files{esc(flags)}</p>" + gallery(
            [tile(p, [(f"{lab} · {sp}", "w" if g["conflicting_labels"] else "")])
             for p, lab, sp in list(zip(g["paths"], g["labels"], g["splits"]))[:6]]))
    return section(title, *rows, note=_more(groups, note + " Largest groups first.", SHOWN // 3))


def _more(items: list, note: str, shown: int = SHOWN) -> str:
    return note + (f" Showing {shown} of {len(items):,}; inspect.json lists all." if len(items) > shown else "")


def _n(count: int, noun: str) -> str:
    return f"{count:,} {noun}" + ("" if count == 1 else "es" if noun.endswith("s") else "s")
