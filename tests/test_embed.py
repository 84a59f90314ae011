"""imgtune embed and similar: a run's backbone features as a Parquet index, and the nearest images of
each query by cosine similarity."""

import csv
import importlib.machinery
import json
import shutil
import sys
import types

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import make_image
from PIL import Image

from imgtune.cache.features import FeatureCache, file_digest
from imgtune.cli import main
from imgtune.errors import DataError, ParameterError
from imgtune.infer import embed as embedding
from imgtune.model.backbones import create_backbone
from imgtune.runs.trained import load_run


def _embed(run, paths, out, cache) -> int:
    return main(["embed", str(run), *map(str, paths), "--output", str(out), "--cache-dir", str(cache), "--quiet"])


@pytest.fixture(scope="module")
def index(trained_run, tmp_path_factory):
    """The trained run's own images (class folders), embedded once for the module's tests."""
    run, data, cache = trained_run
    out = tmp_path_factory.mktemp("index") / "vectors.parquet"
    assert _embed(run, [data], out, cache) == 0
    return out


def test_embed_writes_the_vectors_the_head_was_trained_on_with_class_folder_labels(trained_run, index):
    run, _, cache = trained_run
    table = pq.read_table(index)
    assert table.column_names == ["path", "label", "vector"]
    assert table.schema.field("vector").type == pa.list_(pa.float32(), table.schema.field("vector").type.list_size)
    paths, labels = table.column("path").to_pylist(), table.column("label").to_pylist()
    assert len(paths) == 42 and all(p.startswith("/") for p in paths)
    assert labels == [p.split("/")[-2] for p in paths] and set(labels) == {"circle", "square", "triangle"}
    trained = load_run(run, device="cpu")
    backbone = create_backbone(trained.backbone, image_size=trained.data_config.image_size)
    digests = [file_digest(p) for p in paths]
    cached = np.zeros((len(digests), backbone.num_features), np.float32)  # what training stored
    assert all(FeatureCache(cache, backbone).read_into(digests, cached))
    vectors = np.stack(table.column("vector").to_numpy(zero_copy_only=False))
    assert vectors.dtype == np.float32 and vectors.shape == (42, backbone.num_features)
    np.testing.assert_array_equal(vectors, cached)
    meta = embedding.open_index(index).space
    assert meta["backbone"] == trained.backbone and meta["image_size"] == 32 and meta["dim"] == vectors.shape[1]


def test_labels_come_from_class_folders_and_csvs_and_are_null_elsewhere(trained_run, tmp_path):
    _, data, _ = trained_run
    splits = tmp_path / "splits"
    shutil.copytree(data / "circle", splits / "train" / "circle")
    shutil.copytree(data / "square", splits / "test" / "square")
    loose = tmp_path / "loose"
    loose.mkdir()
    shutil.copy(data / "circle" / "circle_000.png", loose / "a.png")
    (loose / "sub").mkdir()
    shutil.copy(data / "square" / "square_000.png", loose / "sub" / "b.png")
    table = tmp_path / "labels.csv"
    table.write_text("path,label\nx.png,triangle\ny.png,\n")
    shutil.copy(data / "triangle" / "triangle_000.png", tmp_path / "x.png")
    shutil.copy(data / "triangle" / "triangle_001.jpg", tmp_path / "y.png")
    files, labels, skipped = embedding.labelled_inputs([splits, loose, table, loose / "a.png"])
    by_name = {f.split("/")[-1]: y for f, y in zip(files, labels)}
    assert by_name["circle_000.png"] == "circle" and by_name["square_003.jpg"] == "square"
    assert by_name["a.png"] is None and by_name["b.png"] is None  # a folder with images of its own
    assert by_name["x.png"] == "triangle" and by_name["y.png"] is None
    assert len(files) == 14 + 14 + 2 + 2 and not skipped  # a.png named twice, listed once


def test_a_bad_image_is_skipped_and_a_second_embed_reads_the_cache(trained_run, cache_dir, tmp_path, monkeypatch,
                                                                   capsys):
    run, _, _ = trained_run
    cache = cache_dir  # new images: not into the trained run's own cache
    pool = tmp_path / "new"
    pool.mkdir()
    rng = np.random.default_rng(11)
    for i, cls in enumerate(("circle", "square", "triangle")):
        make_image(cls, rng).save(pool / f"new_{i}.png")
    (pool / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    out = tmp_path / "new.parquet"
    assert _embed(run, [pool], out, cache) == 0
    err = capsys.readouterr().err
    assert err.count("skipped ") == 1 and "broken.jpg" in err
    table = pq.read_table(out)
    assert sorted(p.split("/")[-1] for p in table.column("path").to_pylist()) == ["new_0.png", "new_1.png",
                                                                                 "new_2.png"]
    assert table.column("label").to_pylist() == [None] * 3

    def no_extraction(*args, **kw):
        raise AssertionError("the backbone ran: the features were not read from the cache")
    monkeypatch.setattr("imgtune.cache.features.run_network", no_extraction)
    (pool / "broken.jpg").unlink()
    again = tmp_path / "again.parquet"
    assert _embed(run, [pool], again, cache) == 0
    assert pq.read_table(again).equals(table)


def test_similar_finds_the_image_itself_and_a_copy_of_it_first(trained_run, index, tmp_path, capsys):
    run, data, cache = trained_run
    queries = tmp_path / "queries"
    queries.mkdir()
    original = data / "circle" / "circle_004.png"
    shutil.copy(original, queries / "copy.png")  # the same bytes under another name
    own = data / "square" / "square_001.jpg"
    assert main(["similar", str(run), str(queries), str(own), "--index", str(index), "-k", "5",
                 "--cache-dir", str(cache), "--quiet"]) == 0
    out = index.with_name("vectors.similar.csv")  # the default: beside the index
    assert "vectors.similar.csv" in capsys.readouterr().out
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0]) == ["query", "rank", "path", "label", "similarity"] and len(rows) == 10
    first = {r["query"].split("/")[-1]: r for r in rows if r["rank"] == "1"}
    assert first["copy.png"]["path"] == str(original) and first["copy.png"]["label"] == "circle"
    assert first["square_001.jpg"]["path"] == str(own) and first["square_001.jpg"]["label"] == "square"
    assert all(float(r["similarity"]) == pytest.approx(1.0, abs=1e-5) for r in first.values())
    for q in first:
        sims = [float(r["similarity"]) for r in rows if r["query"].endswith(q)]
        assert sims == sorted(sims, reverse=True) and len(sims) == 5
    page = out.with_suffix(".html").read_text()
    assert page.count('<div class="tile">') == 2 * (1 + 5)  # each query, then one thumbnail per neighbour
    assert page.count("data:image/jpeg") == 2 * (1 + 5) and page.count("similarity 1.000") >= 2


def test_similar_refuses_an_index_of_another_backbone_in_one_line(trained_run, index, tmp_path, capsys):
    run, data, cache = trained_run
    table = pq.read_table(index)
    meta = embedding.open_index(index).space
    other = tmp_path / "other.parquet"
    pq.write_table(table.replace_schema_metadata({embedding.METADATA_KEY: json.dumps(
        {**meta, "backbone": "resnet18", "image_size": 224}).encode()}), other)
    assert main(["similar", str(run), str(data / "circle" / "circle_000.png"), "--index", str(other),
                 "--cache-dir", str(cache), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "resnet18 at 224 px" in err and "imgtune embed" in err


@pytest.mark.parametrize("case", ["missing", "not parquet", "wrong columns", "no metadata"])
def test_a_bad_index_is_one_line(trained_run, tmp_path, capsys, case):
    run, data, cache = trained_run
    path = tmp_path / "bad.parquet"
    if case == "not parquet":
        path.write_text("path,label\n")
    elif case == "wrong columns":
        pq.write_table(pa.table({"path": ["a"], "vec": [[1.0, 2.0]]}), path)
    elif case == "no metadata":
        pq.write_table(pa.table({"path": pa.array(["a"]), "label": pa.array([None], pa.string()),
                                 "vector": pa.array([[1.0, 2.0]], pa.list_(pa.float32(), 2))}), path)
    assert main(["similar", str(run), str(data / "circle" / "circle_000.png"), "--index", str(path),
                 "--cache-dir", str(cache), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert {"missing": "does not exist", "not parquet": "is not a Parquet file", "wrong columns": "vec (",
            "no metadata": "no imgtune metadata"}[case] in err


@pytest.mark.parametrize("case", ["metadata a list", "a NaN vector", "damaged bytes"])
def test_a_damaged_index_made_from_a_good_one_is_one_line(trained_run, index, tmp_path, capsys, case):
    """The metadata valid JSON but not an object, a vector of NaN, or the data pages overwritten: each
    one line naming what is wrong, never a traceback."""
    run, data, cache = trained_run
    table = pq.read_table(index)
    path = tmp_path / "bad.parquet"
    if case == "metadata a list":
        pq.write_table(table.replace_schema_metadata({embedding.METADATA_KEY: b"[1, 2]"}), path)
    elif case == "a NaN vector":
        vectors = np.stack(table.column("vector").to_numpy(zero_copy_only=False)).astype(np.float32)
        vectors[3] = np.nan
        column = pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), vectors.shape[1])
        pq.write_table(table.set_column(2, "vector", column), path)
    else:
        raw = bytearray(index.read_bytes())
        raw[200:len(raw) // 2] = b"\xff" * (len(raw) // 2 - 200)  # the header and footer stay readable
        path.write_bytes(bytes(raw))
    code = main(["similar", str(run), str(data / "circle" / "circle_000.png"), "--index", str(path),
                 "--cache-dir", str(cache), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert {"metadata a list": "not a JSON object", "a NaN vector": "not finite numbers (NaN or infinity), first "
            "in row 3", "damaged bytes": "cannot be read"}[case] in err, err


def test_k_below_one_is_refused(trained_run, index, capsys):
    run, data, _ = trained_run
    with pytest.raises(SystemExit) as e:
        main(["similar", str(run), str(data), "--index", str(index), "-k", "0"])
    assert e.value.code == 2 and capsys.readouterr().err.count("\n") == 1
    with pytest.raises(ParameterError, match="k must be a whole number, 1 or more"):
        embedding.search(embedding.open_index(index), np.ones((1, 4), np.float32), 0)


def _synthetic_index(tmp_path, n=23, d=6, seed=0):
    rng = np.random.default_rng(seed)
    v = rng.normal(size=(n, d)).astype(np.float32)
    v[7] = v[3] * 2  # the same direction as row 3: a tie, broken by row order
    emb = embedding.Embeddings([f"/x/{i}.png" for i in range(n)], [None] * n, v,
                               {"backbone": "b", "weights": "w", "image_size": 16, "transform": "t", "dim": d}, [])
    embedding.write_index(emb, tmp_path / "v.parquet")
    return embedding.open_index(tmp_path / "v.parquet"), v, rng


def test_search_in_blocks_is_exact_and_stable(tmp_path):
    index, v, rng = _synthetic_index(tmp_path)
    q = np.concatenate([v[3:4], rng.normal(size=(4, v.shape[1])).astype(np.float32)])
    sims, rows, method = embedding.search(index, q, 5, block_rows=4)
    unit = v / np.linalg.norm(v, axis=1, keepdims=True)
    full = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ unit.T
    assert method == "exact, NumPy" and rows.shape == (5, 5)
    np.testing.assert_array_equal(rows[0, :2], [3, 7])  # itself and its tie, in index order
    np.testing.assert_allclose(sims, -np.sort(-full, axis=1)[:, :5], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.take_along_axis(full, rows, 1), sims, rtol=1e-5, atol=1e-6)
    all_rows = embedding.search(index, q, 100, block_rows=4)[1]
    assert all_rows.shape == (5, 23)  # k larger than the index: every row
    assert embedding.rows_of(index, [0, 22]) == {0: ("/x/0.png", None), 22: ("/x/22.png", None)}


def test_a_large_index_goes_through_faiss_where_it_is_installed(tmp_path, monkeypatch):
    index, v, rng = _synthetic_index(tmp_path)

    class IndexFlatIP:  # the two calls imgtune makes, as FAISS defines them
        def __init__(self, d):
            self.x = np.zeros((0, d), np.float32)

        def add(self, x):
            self.x = np.concatenate([self.x, x])

        def search(self, q, k):
            s = q @ self.x.T
            r = np.argsort(-s, axis=1, kind="stable")[:, :k]
            return np.take_along_axis(s, r, 1), r
    faiss = types.ModuleType("faiss")
    faiss.__spec__ = importlib.machinery.ModuleSpec("faiss", None)
    faiss.IndexFlatIP = IndexFlatIP
    monkeypatch.setitem(sys.modules, "faiss", faiss)
    monkeypatch.setattr(embedding, "FAISS_MIN_ROWS", 10)
    q = rng.normal(size=(3, v.shape[1])).astype(np.float32)
    sims, rows, method = embedding.search(index, q, 4)
    assert method == "exact, FAISS IndexFlatIP"
    exact = embedding.search(index, q, 4, use_faiss=False)
    np.testing.assert_array_equal(rows, exact[1])
    np.testing.assert_allclose(sims, exact[0], rtol=1e-5)


def test_without_pyarrow_embed_says_which_extra_to_install(trained_run, tmp_path, monkeypatch, capsys):
    run, data, cache = trained_run
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    assert _embed(run, [data], tmp_path / "v.parquet", cache) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'imgtune[embed]'" in err
    assert not (tmp_path / "v.parquet").exists()


def test_an_index_of_no_decodable_images_is_refused(trained_run, cache_dir, tmp_path):
    run, _, _ = trained_run
    cache = cache_dir
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="could be decoded"):
        embedding.embed(load_run(run, device="cpu"), [tmp_path / "bad.png"], cache_dir=cache)
    Image.new("RGB", (8, 8)).save(tmp_path / "ok.png")
    assert len(embedding.embed(load_run(run, device="cpu"), [tmp_path], cache_dir=cache).paths) == 1
