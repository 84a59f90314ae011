"""`imgtune embed` and `imgtune similar`: a run's backbone features of any images as a Parquet index
(path, label, vector), and the images of an index nearest a few query images by cosine similarity.

The vectors are the pooled features of the run's pretrained backbone, the ones its head was trained on,
read from (and added to) the feature cache: a second embed of the same images extracts nothing. The
index carries what made its vectors (backbone, weights, transform and image size) in its schema
metadata, so a query embedded by another backbone or at another size is refused rather than compared.
Search is exact: blocks of the index at a time in NumPy, so memory stays bounded whatever its size;
FAISS's flat inner-product index does the same sums faster where it is installed and the index is large.
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._version import __version__
from ..atomic import write_atomic, write_csv_atomic
from ..cache.features import frozen_features
from ..data.manifest import SPLIT_NAMES
from ..data.scan import image_files, is_image_name
from ..data.csv_labels import label_set, missing_reason, read_csv, row_path
from ..errors import DataError, ParameterError, require
from ..progress import Reporter
from ..runs.trained import fitted_state

METADATA_KEY = b"imgtune.embed"
COLUMNS = ("path", "label", "vector")
ROW_GROUP_ROWS = 8192  # a row group is what a reader holds at once: 8,192 x 1,280 float32 is 42 MB
FAISS_MIN_ROWS = 100_000  # below this the NumPy blocks take well under a second per query batch
BLOCK_FLOATS = 2 ** 23  # 32 MB: the most one block of index vectors or of similarities may take


@dataclass(frozen=True)
class Embeddings:
    """What `embed` found: one row per usable image, and the inputs left out with why."""

    paths: list[str]  # absolute, so the index means the same from any working folder
    labels: list[str | None]  # the class folder's name or the CSV's label(s); None where unknown
    vectors: np.ndarray  # [N, D] float32
    space: dict  # what made the vectors: backbone, weights, image_size, transform, dim
    skipped: list[tuple[str, str]]  # (path, reason)


@dataclass(frozen=True)
class Index:
    """An opened, checked index file; its vectors are read a block at a time by `search`."""

    path: Path
    file: object  # pyarrow.parquet.ParquetFile
    space: dict
    n_rows: int
    dim: int


def require_pyarrow():
    return require(("pyarrow", "pyarrow.parquet"), packages="pyarrow", extra="embed",
                   feature="Embedding indexes (imgtune embed, imgtune similar)")


def space_of(model) -> dict:
    """What decides a run's vectors, as an index records it (without loading the backbone)."""
    trained = fitted_state(model)
    cfg = trained.data_config
    return {"backbone": trained.backbone, "weights": trained.fit_info.get("weights"),
            "image_size": cfg.image_size, "transform": cfg.signature}


def labelled_inputs(inputs: list[str | os.PathLike]) -> tuple[list[str], list[str | None], list[tuple[str, str]]]:
    """Files, folders (searched recursively) and CSVs -> (image paths, absolute and each once; their
    labels; skipped entries). Labels are known for a class-folder layout (a folder with no images of its
    own: DATA/<class>/..., or DATA/{train,val,test}/<class>/...), from the folder's name, and for a CSV
    with path,label (or labels, joined by ";"); None for anything else."""
    files: list[str] = []
    labels: list[str | None] = []
    skipped: list[tuple[str, str]] = []
    for source in map(Path, inputs):
        if source.is_file() and source.suffix.lower() == ".csv":
            rows = read_csv(source)
            for number, r in enumerate(rows, start=2):  # row 1 is the header
                p = row_path(r, source.parent)
                if reason := missing_reason(p):
                    skipped.append((p, reason))
                else:
                    files.append(p)
                    labels.append(";".join(label_set(r, number, source)) or None)
            continue
        found, more = image_files([source])
        skipped += more
        files += found
        labels += _folder_labels(source, found) if source.is_dir() else [None] * len(found)
    seen: set[str] = set()
    kept_files, kept_labels = [], []
    for f, y in zip(files, labels):
        key = os.path.normpath(os.path.abspath(f))
        if key not in seen:  # one row per file, however often the inputs name it
            seen.add(key)
            kept_files.append(key)
            kept_labels.append(y)
    return kept_files, kept_labels, skipped


def _folder_labels(root: Path, files: list[str]) -> list[str | None]:
    """The class of each file under `root` where `root` is laid out as class folders, else None each."""
    if any(f.is_file() and is_image_name(f.name) for f in root.iterdir()):
        return [None] * len(files)  # images of its own: a folder of images, not of classes
    splits = any(d.is_dir() and SPLIT_NAMES.get(d.name.lower()) == "train" for d in root.iterdir())
    out = []
    for f in files:
        parts = Path(f).relative_to(root).parts
        if splits and parts[0].lower() in SPLIT_NAMES:
            parts = parts[1:]
        out.append(parts[0] if len(parts) >= 2 else None)
    return out


def embed(model, inputs: list[str | os.PathLike], *, cache_dir=None, reporter: Reporter | None = None) -> Embeddings:
    """The run's backbone features of every image under `inputs` (see labelled_inputs); files that do
    not decode are left out and listed in `skipped`."""
    trained = fitted_state(model)
    files, labels, skipped = labelled_inputs(inputs)
    if not files:
        raise DataError(f"Found no images in {' '.join(map(str, inputs))}: expected image files, folders of "
                        "them, or a CSV with columns path,label.")
    feats, bad, _ = frozen_features(trained, files, cache_dir=cache_dir, reporter=reporter)
    ok = ~np.isnan(feats).any(axis=1)
    skipped += [(p, bad.get(p, "no features")) for p, k in zip(files, ok) if not k]
    if not ok.any():
        raise DataError(f"None of the {len(files):,} images in {' '.join(map(str, inputs))} could be decoded.")
    return Embeddings([f for f, k in zip(files, ok) if k], [y for y, k in zip(labels, ok) if k],
                      np.ascontiguousarray(feats[ok]), {**space_of(trained), "dim": int(feats.shape[1])}, skipped)


def write_index(emb: Embeddings, path: str | os.PathLike) -> None:
    """The embeddings as a Parquet file (path, label, vector: fixed-size list of float32), with what made
    them in the schema metadata; written atomically."""
    pa, pq = require_pyarrow()
    d = emb.vectors.shape[1]
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(emb.vectors.reshape(-1), pa.float32()), d)
    meta = {**emb.space, "metric": "cosine", "imgtune": __version__}
    schema = pa.schema([pa.field("path", pa.string(), nullable=False), pa.field("label", pa.string()),
                        pa.field("vector", pa.list_(pa.float32(), d), nullable=False)],
                       metadata={METADATA_KEY: json.dumps(meta).encode()})
    table = pa.Table.from_arrays([pa.array(emb.paths, pa.string()), pa.array(emb.labels, pa.string()), vectors],
                                 schema=schema)
    write_atomic(path, lambda tmp: pq.write_table(table, tmp, row_group_size=ROW_GROUP_ROWS))


def open_index(path: str | os.PathLike) -> Index:
    """An index file, checked: a Parquet file with imgtune embed's columns and metadata."""
    pa, pq = require_pyarrow()
    path = Path(path)
    name = path if path.suffix.lower() == ".parquet" else "INDEX.parquet"
    made = f"expected a Parquet file written by imgtune embed (imgtune embed RUN PATH... --output {name})"
    if not path.is_file():
        raise DataError(f"Index {str(path)!r} {'is a folder' if path.is_dir() else 'does not exist'}: {made}.")
    try:
        f = pq.ParquetFile(path)
    except pa.ArrowInvalid as e:  # other failures (permissions, I/O) are the CLI's OSError line
        raise DataError(f"Index {str(path)!r} is not a Parquet file ({str(e).splitlines()[0]}): {made}.") from None
    schema = f.schema_arrow
    types = {name: schema.field(name).type for name in schema.names}
    vector = types.get("vector")
    if not (set(COLUMNS) <= set(types) and all(pa.types.is_string(types[c]) or pa.types.is_large_string(types[c])
                                               for c in ("path", "label"))
            and vector is not None and pa.types.is_fixed_size_list(vector) and vector.value_type == pa.float32()):
        found = ", ".join(f"{name} ({t})" for name, t in types.items())
        raise DataError(f"Index {str(path)!r} has columns {found}; expected path (string), label (string) and "
                        f"vector (fixed-size list of float32): {made}.")
    try:
        space = json.loads((schema.metadata or {})[METADATA_KEY])
    except (KeyError, ValueError):
        raise DataError(f"Index {str(path)!r} has no imgtune metadata (which backbone made its vectors): "
                        f"{made}.") from None
    if not isinstance(space, dict):
        raise DataError(f"Index {str(path)!r} has imgtune metadata that is not a JSON object "
                        f"({type(space).__name__}): {made}.")
    return Index(path, f, space, f.metadata.num_rows, vector.list_size)


def check_space(index: Index, model, run: str = "the run") -> None:
    """Refuse to compare vectors of an index with those of a run whose backbone makes other ones."""
    a, b = index.space, space_of(model)
    if all(a.get(key) == b[key] for key in b):
        return
    if (a.get("backbone"), a.get("image_size")) != (b["backbone"], b["image_size"]):
        how = (f"made with backbone {a.get('backbone')} at {a.get('image_size')} px; {run} uses {b['backbone']} "
               f"at {b['image_size']} px")
    elif a.get("weights") != b["weights"]:
        how = f"made with backbone weights {a.get('weights')!r}; {run} uses {b['weights']!r}"
    else:
        how = f"made with another transform ({a.get('transform')}); {run} uses {b['transform']}"
    raise DataError(f"Index {str(index.path)!r} was {how}: their vectors cannot be compared. Embed the images "
                    f"again with this run (imgtune embed RUN PATH... --output {index.path}).")


def _check_k(k) -> None:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ParameterError("k", f"must be a whole number, 1 or more; received {k!r}.")


def _normalised(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, np.float32)
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)  # a zero vector stays 0: similarity 0


def _blocks(index: Index, rows: int):
    """(first row, [B, D] float32 vectors) of the index, `rows` at a time."""
    pa, _ = require_pyarrow()
    start = 0
    batches = index.file.iter_batches(batch_size=rows, columns=["vector"])
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except (pa.ArrowException, OSError) as e:  # damaged bytes inside the file
            raise DataError(f"Index {str(index.path)!r} cannot be read past row {start:,} "
                            f"({' '.join(str(e).split())[:200]}): embed the images again.") from None
        col = batch.column(0)
        if col.null_count:
            raise DataError(f"Index {str(index.path)!r} has rows without a vector: embed the images again.")
        v = col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), index.dim)
        bad = ~np.isfinite(v).all(1)
        if bad.any():
            raise DataError(f"Index {str(index.path)!r} has vectors that are not finite numbers (NaN or infinity), "
                            f"first in row {start + int(np.argmax(bad)):,}: embed the images again.")
        yield start, v
        start += len(col)


def search(index: Index, queries: np.ndarray, k: int, *, block_rows: int | None = None,
           use_faiss: bool | None = None) -> tuple[np.ndarray, np.ndarray, str]:
    """The k index rows most cosine-similar to each query -> (similarities [Q, k'], row numbers [Q, k'],
    how it searched), best first, ties in index order; k' = min(k, rows). Exact either way: NumPy over
    blocks of `block_rows` (default: what fits BLOCK_FLOATS), or FAISS's IndexFlatIP on normalised
    vectors where `use_faiss` (default: faiss is importable and the index has over FAISS_MIN_ROWS rows)."""
    _check_k(k)
    q = _normalised(queries)
    if q.ndim != 2 or q.shape[1] != index.dim:
        raise DataError(f"Index {str(index.path)!r} holds {index.dim}-dimensional vectors; the queries have "
                        f"{q.shape[-1]}: embed the images again with this run.")
    k = min(int(k), index.n_rows)
    if k == 0:  # an empty index: nothing is near anything
        return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64), "exact, NumPy"
    rows = block_rows or max(256, BLOCK_FLOATS // max(len(q), index.dim, 1))
    if use_faiss is None:
        use_faiss = index.n_rows > FAISS_MIN_ROWS and importlib.util.find_spec("faiss") is not None
    if use_faiss:
        return (*_faiss_search(index, q, k, rows), "exact, FAISS IndexFlatIP")
    best_s = np.full((len(q), 0), -np.inf, np.float32)
    best_r = np.zeros((len(q), 0), np.int64)
    for start, v in _blocks(index, rows):
        s = q @ _normalised(v).T
        kk = min(k, s.shape[1])
        part = np.argpartition(-s, kk - 1, axis=1)[:, :kk] if kk < s.shape[1] else \
            np.broadcast_to(np.arange(s.shape[1]), s.shape)
        merged_s = np.concatenate([best_s, np.take_along_axis(s, part, axis=1)], axis=1)
        merged_r = np.concatenate([best_r, part + start], axis=1)
        order = np.lexsort((merged_r, -merged_s), axis=1)[:, :k]  # by similarity, then by row: stable
        best_s, best_r = np.take_along_axis(merged_s, order, 1), np.take_along_axis(merged_r, order, 1)
    return best_s, best_r, "exact, NumPy"


def _faiss_search(index: Index, q: np.ndarray, k: int, rows: int) -> tuple[np.ndarray, np.ndarray]:
    import faiss

    flat = faiss.IndexFlatIP(index.dim)
    for _, v in _blocks(index, rows):
        flat.add(np.ascontiguousarray(_normalised(v)))
    s, r = flat.search(np.ascontiguousarray(q), k)
    return s.astype(np.float32), r.astype(np.int64)


def rows_of(index: Index, wanted: np.ndarray) -> dict[int, tuple[str, str | None]]:
    """{row number: (path, label)} for the wanted rows, in one pass over the two small columns."""
    want = np.unique(np.asarray(wanted, np.int64))
    out, start = {}, 0
    for batch in index.file.iter_batches(batch_size=65_536, columns=["path", "label"]):
        n = batch.num_rows
        here = want[(want >= start) & (want < start + n)]
        if len(here):
            local = (here - start).tolist()
            paths = batch.column(0).take(local).to_pylist()
            labels = batch.column(1).take(local).to_pylist()
            out.update(zip(here.tolist(), zip(paths, labels)))
        start += n
    return out


def similar(model, queries: list[str | os.PathLike], index: str | os.PathLike, k: int = 10, *, cache_dir=None,
            reporter: Reporter | None = None, run: str = "the run") -> dict:
    """Each query image's k nearest images in the index -> {"queries": [{"path", "neighbours": [{"rank",
    "path", "label", "similarity"}]}], "skipped", "n_index", "index", "k", "method"}. A query that is in
    the index finds itself first, at similarity 1."""
    _check_k(k)
    opened = open_index(index)  # checked before any image is embedded
    check_space(opened, model, run)
    if opened.n_rows == 0:
        raise DataError(f"Index {str(opened.path)!r} holds no images: embed some first.")
    emb = embed(model, queries, cache_dir=cache_dir, reporter=reporter)
    sims, found, method = search(opened, emb.vectors, k)
    where = rows_of(opened, found)
    out = [{"path": p, "neighbours": [{"rank": rank, "path": where[r][0], "label": where[r][1],
                                       "similarity": float(s)}
                                      for rank, (s, r) in enumerate(zip(row_s, row_r), 1)]}
           for p, row_s, row_r in zip(emb.paths, sims, found.tolist())]
    return {"queries": out, "skipped": emb.skipped, "n_index": opened.n_rows, "index": str(opened.path),
            "k": int(k), "method": method}


CSV_COLUMNS = ("query", "rank", "path", "label", "similarity")


def write_neighbours(result: dict, output: str | os.PathLike) -> None:
    """One row per query and neighbour, best first (label empty where the index has none)."""
    write_csv_atomic(output, CSV_COLUMNS, ([q["path"], n["rank"], n["path"], n["label"] or "",
                                            f"{n['similarity']:.6f}"]
                                           for q in result["queries"] for n in q["neighbours"]))


def default_output(index: str | os.PathLike) -> Path:
    """Where `similar` writes without --output: beside the index, INDEX_STEM.similar.csv (and .html)."""
    index = Path(index)
    return index.with_name(f"{index.stem}.similar.csv")
