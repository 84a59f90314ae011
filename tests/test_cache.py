"""Features are extracted once per file content + backbone + transform."""

import numpy as np
import torch
from conftest import write_class_folders
from PIL import Image

from imgtune.cache.features import FeatureCache, extract_features
from imgtune.cache.store import ShardStore
from imgtune.model.backbones import create_backbone


def _paths(root):
    return sorted(str(p) for p in root.rglob("*.*"))


def test_second_extraction_is_all_hits_and_edits_invalidate_only_themselves(tmp_path):
    root = write_class_folders(tmp_path / "p", 3)
    paths = _paths(root)
    b = create_backbone(image_size=32)
    cache = FeatureCache(tmp_path / "cache", b)
    first, bad, n, _ = extract_features(b, paths, cache, device=torch.device("cpu"))
    assert n == len(paths) and not bad and not np.isnan(first).any()
    again, _, n, _ = extract_features(b, paths, cache, device=torch.device("cpu"))
    assert n == 0 and np.array_equal(first, again)

    Image.new("RGB", (40, 40), (255, 255, 0)).save(paths[0])  # edit one file
    _, _, n, _ = extract_features(b, paths, cache, device=torch.device("cpu"))
    assert n == 1

    other = create_backbone(image_size=48)  # another transform: a cache of its own
    _, _, n, _ = extract_features(other, paths, FeatureCache(tmp_path / "cache", other),
                                  device=torch.device("cpu"))
    assert n == len(paths)


def test_torn_or_altered_shards_are_recomputed_and_bad_files_reported(tmp_path):
    root = write_class_folders(tmp_path / "p", 2)
    (root / "circle" / "zero.png").write_bytes(b"")
    paths = _paths(root)
    b = create_backbone(image_size=32)
    feats, bad, _, _ = extract_features(b, paths, FeatureCache(tmp_path / "cache", b), device=torch.device("cpu"),
                                        batch_size=2)
    assert bad == {str(root / "circle" / "zero.png"): "empty file (0 bytes)"}
    index = FeatureCache(tmp_path / "cache", b).store.index()
    shards = sorted({shard for shard, _ in index.values()})
    assert len(shards) >= 3  # batches of 2: one shard per batch
    damaged = sum(1 for shard, _ in index.values() if shard in shards[:2])
    shards[0].write_bytes(shards[0].read_bytes()[:40])  # torn
    flipped = bytearray(shards[1].read_bytes())
    flipped[-100] ^= 0x01  # one bit of one value: still the right length, fails the checksum
    shards[1].write_bytes(bytes(flipped))
    again, _, n, _ = extract_features(b, paths, FeatureCache(tmp_path / "cache", b), device=torch.device("cpu"))
    assert n == damaged and np.allclose(np.nan_to_num(feats), np.nan_to_num(again), atol=1e-5)
    assert not shards[1].exists()  # the damaged shard is gone, its rows written again


def test_cache_on_disk_is_close_to_the_raw_feature_bytes(tmp_path):
    root = write_class_folders(tmp_path / "p", 3)
    paths = _paths(root)
    b = create_backbone(image_size=32)
    cache = FeatureCache(tmp_path / "cache", b)
    extract_features(b, paths, cache, device=torch.device("cpu"))
    raw = len(paths) * b.num_features * 4
    assert cache.store.disk_bytes() <= 1.2 * raw


def test_rows_read_one_by_one_match_the_shards_and_a_damaged_shard_counts_as_missing(tmp_path):
    store = ShardStore(tmp_path / "s", {"what": "test"}, dtype="<f2")
    rng = np.random.default_rng(0)
    rows = {f"k{i}": rng.normal(size=(3, 2, 2)).astype(np.float16) for i in range(10)}
    for start in (0, 4, 8):  # three shards
        keys = list(rows)[start:start + 4]
        store.put_many(keys, np.stack([rows[k] for k in keys]))
    asked = ["k9", "k0", "missing", "k5", "k0"]  # any order, repeats, one that is not there
    got, found = ShardStore(tmp_path / "s", {"what": "test"}, dtype="<f2").get_rows(asked, (3, 2, 2))
    assert found == [True, True, False, True, True] and got.shape == (5, 3, 2, 2)
    for j, k in enumerate(asked):
        if k in rows:
            assert np.array_equal(got[j], rows[k])
    fresh = ShardStore(tmp_path / "s", {"what": "test"}, dtype="<f2")
    shard = fresh.index()["k5"][0]
    body = bytearray(shard.read_bytes())
    body[-20] ^= 0x01  # one bit of the last row
    shard.write_bytes(bytes(body))
    _, found = fresh.get_rows(["k4", "k5", "k0"], (3, 2, 2))
    assert found == [False, False, True] and not shard.exists()


def test_cached_rows_are_read_into_the_callers_matrix_and_others_are_left_alone(tmp_path):
    store = ShardStore(tmp_path / "s", {"what": "test"})
    vectors = np.arange(12, dtype=np.float32).reshape(4, 3)
    store.put_many(["a", "b"], vectors[:2])
    store.put_many(["c", "d"], vectors[2:])
    out = np.full((5, 3), np.nan, np.float32)
    found = ShardStore(tmp_path / "s", {"what": "test"}).read_into(["d", None, "a", "missing", "a"], out)
    assert found == [True, False, True, False, True]
    assert np.array_equal(out[[0, 2, 4]], vectors[[3, 0, 0]]) and np.isnan(out[[1, 3]]).all()
