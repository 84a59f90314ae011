"""What `imgtune inspect` shows: the console summary and inspect.html, from the audit document."""

from __future__ import annotations

from . import plots
from .html import cards, esc, figure, gallery, page, section, table, tile

SHOWN = 60  # entries per list on the page; inspect.json has them all


def summary_lines(doc: dict) -> list[str]:
    ex, near = doc["exact_duplicates"], doc["near_duplicates"]
    multi = "multilabel" in doc
    kind, noun = ("label", f"{len(doc['classes']):,} labels (multi-label)") if multi else (
        "class", _n(len(doc["classes"]), "class"))
    lines = [f"{doc['n_files']:,} files, {doc['n_usable']:,} usable images in {noun}; "
             f"splits: {doc['splits_from']}.",
             f"Imbalance (largest/smallest {kind}" + (", train" if "train" in doc["counts"] else "") + "): "
             + (f"{doc['imbalance_ratio']:.2f}" if doc["imbalance_ratio"]
                else f"undefined (an empty {kind})"),
             f"Unreadable or not images: {len(doc['unreadable']):,}",
             f"Odd files: {len(doc['odd']):,}" + _odd_kinds_text(doc["odd"]),
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
        lines.append(f"{'Labels' if multi else 'Classes'} with no usable image: "
                     f"{', '.join(doc['empty_classes'])}")
    if multi:
        lines += multilabel_lines(doc["multilabel"])
    if "label_issues" in doc:
        lines.append(f"Likely label errors ({doc.get('label_issues_method', 'rule')}, out of fold): "
                     f"{len(doc['label_issues']):,} of {doc.get('label_issues_judged', 0):,} images")
    if "label_issues_skipped" in doc:
        lines.append(doc["label_issues_skipped"])
    return lines


def multilabel_lines(ml: dict) -> list[str]:
    """The console lines of the audit's "multilabel" section: labels per image, rare labels, top pairs."""
    card, rule = ml["cardinality"], ml["rare_rule"]
    rare = ml["rare_labels"]
    pairs = ml["cooccurrence"]["top_pairs"][:3]
    lines = [f"Labels per image: mean {card['mean']:.2f}, at most {card['max']}; " + _cardinality_text(card),
             f"Rare labels (under {rule['min_images']} images or {rule['min_share']:.0%} of them): "
             + (", ".join(f"{r['label']} ({r['images']:,})" for r in rare) if rare else "none")]
    lines.append("Labels seen together most often: "
                 + ("; ".join(_pair_text(p) for p in pairs) if pairs else "no two on one image"))
    return lines


def _pair_text(p: dict) -> str:
    """'a & b on 3 images (P(b | a) 0.75, P(a | b) 1.00)'."""
    a, b = p["a"], p["b"]
    return (f"{a} & {b} on {p['images']:,} images (P({b} | {a}) {_rate(p['p_b_given_a'])}, "
            f"P({a} | {b}) {_rate(p['p_a_given_b'])})")


def _cardinality_text(card: dict) -> str:
    """'2 images with no label, 3 with 1, 1 with 2, 0 with 3 or more'."""
    w = card["images_with"]
    return (f"{w['0']:,} images with no label, {w['1']:,} with 1, {w['2']:,} with 2, "
            f"{w['3+']:,} with 3 or more")


def _rate(value) -> str:
    """A conditional rate to two places, n/a where undefined."""
    return "n/a" if value is None else f"{value:.2f}"


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
    multi = "multilabel" in doc
    if multi:
        top += _multilabel_cards(doc["multilabel"])
    classes = doc["classes"]
    count_rows = [[c, *(f"{doc['counts'][s].get(c, 0):,}" for s in doc["counts"]),
                   f"{sum(doc['counts'][s].get(c, 0) for s in doc['counts']):,}"] for c in classes]
    body = [cards(top), section("Summary", "<ul>" + "".join(f"<li>{esc(x)}</li>" for x in summary_lines(doc))
                                + "</ul>")]
    kind = "label" if multi else "class"
    body.append(section(f"Images per {kind} and split", "<div class=\"row\">",
                        table([kind, *doc["counts"], "total"], count_rows),
                        figure(plots.split_counts(doc["counts"]), f"images per {kind} and split")
                        if doc["counts"] else "", "</div>",
                        note="An image counts once for each of its labels." if multi else ""))
    if multi:
        body.append(_multilabel_section(doc))
    if "label_issues_skipped" in doc:
        body.append(section("Likely label errors", "<p>Not looked for in multi-label data.</p>",
                            note=doc["label_issues_skipped"]))
    if "label_issues" in doc:
        issues = doc["label_issues"][:SHOWN]
        body.append(section("Likely label errors", gallery([tile(r["path"], [
            (f"labelled {r['label']} ({r['score']:.2f})", "w"),
            (f"looks like {r['suggested']} ({r['probability_suggested']:.2f})", "t"), (r["split"], "")])
            for r in issues]) if issues else "<p>None found.</p>",
            note=_more(doc["label_issues"], f"{doc.get('label_issues_method', 'rule').capitalize()} on out-of-fold "
                                            "probabilities: each image judged by the run's head fitted without "
                                            "it, on the cached features. Least likely label first; all of them "
                                            "are in label_issues.csv beside this page. Check by eye before "
                                            "relabelling.")))
    body.append(_groups("Exact duplicates", ex, "Byte-identical files."))
    body.append(_groups("Near duplicates", near,
                        f"Perceptual hashes within {doc['near_distance']} of 64 bits: resized, re-encoded or "
                        "lightly edited copies."))
    body.append(section("Tiny images", gallery([tile(r["path"], [(f"{r['width']}x{r['height']}", "w")])
                                                for r in doc["tiny"][:SHOWN]]) if doc["tiny"] else "<p>None.</p>",
                        note=_more(doc["tiny"], f"Shorter side under {doc['min_side']} px.")))
    body.append(_odd_section(doc))
    body.append(section("Unreadable files", table(["file", "reason"], [[r["path"], r["reason"]]
                                                                        for r in doc["unreadable"][:SHOWN]],
                                                  path_column=0)
                        if doc["unreadable"] else "<p>None.</p>",
                        note=_more(doc["unreadable"], "Training skips these and lists them in RUN/skipped.csv.")))
    return page(f"imgtune inspect: {doc['source']}",
                f"{doc['n_files']:,} files in {_n(len(classes), 'class')}. Nothing was modified.", "\n".join(body))


ODD_KINDS = {"extension": "wrong extension", "mode": "unusual mode", "frames": "several frames",
             "very_large": "very large", "dark": "very dark", "light": "very light",
             "low_information": "low information", "blurry": "blurry", "odd_aspect_ratio": "odd aspect ratio"}


def _odd_kind_counts(odd: list[dict]) -> dict[str, int]:
    """Odd files per kind of reason (a file with two reasons counts under both), most common first."""
    counts: dict[str, int] = {}
    for r in odd:
        for kind in r.get("kinds", []):
            counts[kind] = counts.get(kind, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _odd_kinds_text(odd: list[dict]) -> str:
    """' (blurry 3, very dark 1)' after the odd-file count; '' when there are none."""
    counts = _odd_kind_counts(odd)
    if not counts:
        return ""
    return " (" + ", ".join(f"{ODD_KINDS.get(k, k)} {n:,}" for k, n in counts.items()) + ")"


def _odd_section(doc: dict) -> str:
    """Each odd file with its reasons (a quality reason carries its measure and threshold), then the
    quality rules: the measure each reads, its threshold, what a flag means, and how many it flagged."""
    odd = doc["odd"]
    rows = [[r["path"], "; ".join(r["reasons"])] for r in odd[:SHOWN]]
    files = table(["file", "why"], rows, path_column=0) if odd else "<p>None.</p>"
    rules = doc.get("quality_rules", [])
    counts = _odd_kind_counts(odd)
    parts = [files]
    if rules:
        parts.append("<p class=\"note\">Quality checks, measured on the decoded pixels of every usable image "
                     "(inspect.json gives each odd file's measures).</p>")
        parts.append(table(["check", "measure", "flags when", "threshold", "what it means", "files"],
                           [[r.get("label", r["kind"]), r["measure"], r["flags_when"],
                             f"{r['threshold']:g}", r["means"], f"{counts.get(r['kind'], 0):,}"]
                            for r in rules]))
    return section("Odd files", *parts, note=_more(odd, "Usable, but worth a look."))


def _multilabel_cards(ml: dict) -> list[tuple[str, str, str]]:
    """Headline cards of multi-label data: labels per image, images without a label, rare labels."""
    card = ml["cardinality"]
    return [(f"{card['mean']:.2f}", "labels per image (mean)", ""),
            (f"{card['images_with']['0']:,}", "images with no label", ""),
            (f"{len(ml['rare_labels']):,}", "rare labels", "bad" if ml["rare_labels"] else "good")]


def _multilabel_section(doc: dict) -> str:
    """Labels per image by split, the rare labels, the pairs seen together most often, and the
    co-occurrence heat maps (counts, and P(column | row))."""
    ml, labels = doc["multilabel"], doc["classes"]
    card_rows = [[split, f"{c['images']:,}", f"{c['mean']:.2f}", *(f"{c['images_with'][k]:,}" for k in
                                                                   ("0", "1", "2", "3+")), c["max"]]
                 for split, c in [*ml["by_split"].items(), ("all", ml["cardinality"])]]
    parts = ["<p class=\"note\">Labels per image.</p>",
             table(["split", "images", "mean", "no label", "1", "2", "3+", "most"], card_rows)]
    rule, rare = ml["rare_rule"], ml["rare_labels"]
    splits = list(ml["by_split"])
    parts.append(f"<p class=\"note\">Rare labels: on fewer than {rule['min_images']} images or under "
                 f"{rule['min_share']:.0%} of them; few examples to learn from, and a noisy score.</p>")
    parts.append(table(["label", "images", "share", *splits],
                       [[r["label"], f"{r['images']:,}", f"{r['share']:.2%}",
                         *(f"{r['by_split'].get(s, 0):,}" for s in splits)] for r in rare])
                 if rare else "<p>None.</p>")
    co = ml["cooccurrence"]
    parts.append(f"<p class=\"note\">Labels seen together most often ({len(co['top_pairs'])} of "
                 f"{co['pairs_seen']:,} pairs on at least one image).</p>")
    pair_rows = [[p["a"], p["b"], f"{p['images']:,}", _rate(p["p_b_given_a"]), _rate(p["p_a_given_b"])]
                 for p in co["top_pairs"]]
    parts.append(table(["label A", "label B", "images", "P(B | A)", "P(A | B)"], pair_rows) if pair_rows
                 else "<p>No two labels on one image.</p>")
    if labels:
        parts += ["<div class=\"row\">",
                  figure(plots.cooccurrence(co["counts"], labels, conditional=False),
                         "label co-occurrence, counts"),
                  figure(plots.cooccurrence(co["counts"], labels, conditional=True),
                         "label co-occurrence, P(column | row)"), "</div>"]
    return section("Multi-label", *parts,
                   note="Over the usable images of every split. P(B | A): the share of label A's images that "
                        "also carry label B.")


def _groups(title: str, groups: list[dict], note: str) -> str:
    if not groups:
        return section(title, "<p>None.</p>", note=note)
    rows = []
    for g in groups[:SHOWN // 3]:
        flags = (" · across splits" if g["across_splits"] else "") + (" · conflicting labels"
                                                                      if g["conflicting_labels"] else "")
        rows.append(f"<p class=\"note\">{len(g['paths'])} files{esc(flags)}</p>" + gallery(
            [tile(p, [(f"{lab or 'no label'} · {sp}", "w" if g["conflicting_labels"] else "")])
             for p, lab, sp in list(zip(g["paths"], g["labels"], g["splits"]))[:6]]))
    return section(title, *rows, note=_more(groups, note + " Largest groups first.", SHOWN // 3))


def _more(items: list, note: str, shown: int = SHOWN) -> str:
    return note + (f" Showing {shown} of {len(items):,}; inspect.json lists all." if len(items) > shown else "")


def _n(count: int, noun: str) -> str:
    return f"{count:,} {noun}" + ("" if count == 1 else "es" if noun.endswith("s") else "s")
