"""Training data layer: lazy image sources, percentiles, crop samplers (numpy only, no torch)."""

from __future__ import annotations

import json
import logging
import pickle

import numpy as np
import pytest
import tifffile

from cyclesr_deploy.errors import InputError
from cyclesr_deploy.images import write_tiff
from cyclesr_deploy.model import NormalizationConfig
from cyclesr_deploy.synthetic import SynthConfig, generate_dataset
from cyclesr_deploy.training.data import (
    CropSampler,
    ImageSource,
    PairedCropSampler,
    ValidationPair,
    describe,
    dihedral,
    estimate_percentiles,
    load_validation_pairs,
)


def identity(x: np.ndarray) -> np.ndarray:
    return x


def _folder(tmp_path, name, images, suffix=".tif"):
    d = tmp_path / name
    d.mkdir()
    for i, img in enumerate(images):
        write_tiff(d / f"{i:03d}{suffix}", img, pixel_size_um=0.05)
    return d


def _ramp_images(n, h=12, w=12, offset=0):
    """Images whose pixel values are unique over the whole set (locates any crop exactly)."""
    return [
        (offset + k * h * w + np.arange(h * w, dtype=np.float32)).reshape(h, w) for k in range(n)
    ]


# -- ImageSource ---------------------------------------------------------------------------


def test_folder_and_stack_sources_give_the_same_images(tmp_path):
    cfg = SynthConfig(size=64)
    generate_dataset(tmp_path / "f", cfg, n_train=4, n_test=0)
    generate_dataset(tmp_path / "s", cfg, n_train=4, n_test=0, stack=True)
    folder = ImageSource.open(tmp_path / "f" / "trainA", "--train-a", min_size=32)
    stack = ImageSource.open(tmp_path / "s" / "trainA.tif", "--train-a", min_size=32)
    assert (folder.kind, stack.kind) == ("folder", "stack")
    assert folder.n_images == stack.n_images == 4
    assert folder.names == ["0000.tif", "0001.tif", "0002.tif", "0003.tif"]
    assert stack.names[1] == "trainA.tif[1]"
    assert folder.shapes == stack.shapes == [(64, 64)] * 4
    assert folder.dtype == stack.dtype == "uint16"
    assert folder.pixel_size_um == pytest.approx(stack.pixel_size_um)
    assert folder.pixel_size_um == pytest.approx(cfg.hr_pixel_nm * 1e-3)
    for i in range(4):
        a, b = folder.read(i), stack.read(i)
        assert a.dtype == np.float32 and a.shape == (64, 64)
        np.testing.assert_array_equal(a, b)
    with pytest.raises(IndexError):
        folder.read(4)
    folder.close()
    stack.close()


def test_single_2d_image_is_a_source_of_one(tmp_path):
    write_tiff(tmp_path / "one.tif", np.ones((16, 20), np.uint8))
    src = ImageSource.open(tmp_path / "one.tif", "--train-b", min_size=16)
    assert (src.kind, src.n_images, src.names, src.shapes) == ("image", 1, ["one.tif"], [(16, 20)])


def test_open_reads_no_pixel_data(tmp_path, monkeypatch):
    _folder(tmp_path, "a", [np.zeros((16, 16), np.uint16)] * 3)
    write_tiff(tmp_path / "stack.tif", np.zeros((3, 16, 16), np.uint16))
    calls = []

    def spy(original):
        def wrapped(*args, **kwargs):
            calls.append(original.__qualname__)
            return original(*args, **kwargs)

        return wrapped

    for cls in (tifffile.TiffFile, tifffile.TiffPage, tifffile.TiffFrame, tifffile.TiffPageSeries):
        monkeypatch.setattr(cls, "asarray", spy(cls.asarray))
    folder = ImageSource.open(tmp_path / "a", "--train-a", min_size=8)
    stack = ImageSource.open(tmp_path / "stack.tif", "--train-a", min_size=8)
    assert calls == []
    folder.read(1)
    stack.read(2)
    assert calls  # pixels are read on demand


def test_missing_path_and_empty_folders(tmp_path):
    with pytest.raises(InputError, match=r"--train-a: .*does not exist"):
        ImageSource.open(tmp_path / "nope", "--train-a", min_size=8)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"--train-a: folder .* contains no \.tif/\.tiff"):
        ImageSource.open(tmp_path / "empty", "--train-a", min_size=8)
    d = tmp_path / "other"
    (d / "sub").mkdir(parents=True)
    (d / "notes.txt").write_text("x")
    write_tiff(d / "sub" / "x.tif", np.zeros((8, 8), np.uint8))
    with pytest.raises(InputError, match=r"not searched recursively.*sub.*notes\.txt"):
        ImageSource.open(d, "--train-b", min_size=8)


def test_garbage_and_truncated_files_are_skipped_with_a_warning(tmp_path, caplog):
    d = _folder(tmp_path, "a", [np.full((16, 16), 7, np.uint16)] * 2)
    (d / "garbage.tif").write_bytes(b"this is not a tiff at all")
    full = (d / "000.tif").read_bytes()
    (d / "cut.tif").write_bytes(full[: len(full) - 200])  # header intact, pixel data cut
    (d / "002.tif.part").write_bytes(b"half-written")  # in-progress write: ignored
    (d / "._000.tif").write_bytes(b"macOS resource fork")  # hidden: ignored
    with caplog.at_level(logging.WARNING, logger="cyclesr_deploy"):
        src = ImageSource.open(d, "--train-a", min_size=8)
    assert src.names == ["000.tif", "001.tif"]
    assert sorted(name for name, _ in src.skipped) == ["cut.tif", "garbage.tif"]
    reasons = dict(src.skipped)
    assert "truncated" in reasons["cut.tif"]
    assert "not a readable TIFF" in reasons["garbage.tif"]
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "garbage.tif" in logged and "cut.tif" in logged and "--train-a" in logged
    assert describe(src)["n_skipped"] == 2


def test_folder_of_only_garbage_and_single_garbage_file_are_errors(tmp_path):
    d = tmp_path / "bad"
    d.mkdir()
    (d / "a.tif").write_bytes(b"nope")
    (d / "b.tiff").write_bytes(b"")
    with pytest.raises(InputError, match=r"--train-b: none of the 2 TIFF file\(s\)"):
        ImageSource.open(d, "--train-b", min_size=8)
    with pytest.raises(InputError, match=r"--train-b: .*a\.tif.*not a readable TIFF"):
        ImageSource.open(d / "a.tif", "--train-b", min_size=8)


def test_truncated_stack_and_non_finite_pixels_are_errors(tmp_path, rng):
    path = write_tiff(tmp_path / "s.tif", np.ones((4, 40, 50), np.uint16))
    data = path.read_bytes()
    (tmp_path / "cut.tif").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"--train-a: .*cut\.tif: truncated"):
        ImageSource.open(tmp_path / "cut.tif", "--train-a", min_size=8)
    img = np.ones((16, 16), np.float32)
    img[3, 4] = np.nan
    write_tiff(tmp_path / "nan.tif", img)
    src = ImageSource.open(tmp_path / "nan.tif", "--train-a", min_size=8)  # headers only
    with pytest.raises(InputError, match=r"nan\.tif contains 1 non-finite"):
        src.read(0)
    with pytest.raises(InputError, match="non-finite"):
        estimate_percentiles(src, 1, 99, rng=rng)


def test_rgb_and_multichannel_are_rejected(tmp_path):
    d = tmp_path / "rgb"
    d.mkdir()
    write_tiff(d / "gray.tif", np.zeros((16, 16), np.uint8))
    tifffile.imwrite(d / "color.tif", np.zeros((16, 16, 3), np.uint8), photometric="rgb")
    with pytest.raises(InputError, match=r"--train-a: color\.tif: .*single-channel.*got RGB"):
        ImageSource.open(d, "--train-a", min_size=8)
    tifffile.imwrite(
        tmp_path / "two.tif",
        np.zeros((3, 2, 16, 16), np.uint16),
        imagej=True,
        metadata={"axes": "ZCYX"},
    )
    with pytest.raises(InputError, match=r"got 2 channels.*[Ss]plit"):
        ImageSource.open(tmp_path / "two.tif", "--train-a", min_size=8)


def test_image_smaller_than_crop_is_named(tmp_path):
    d = tmp_path / "a"
    d.mkdir()
    write_tiff(d / "big.tif", np.zeros((64, 64), np.uint16))
    write_tiff(d / "tiny.tif", np.zeros((64, 20), np.uint16))
    with pytest.raises(InputError, match=r"--train-a: 1 image.* 32 px.*tiny\.tif \(64x20 px"):
        ImageSource.open(d, "--train-a", min_size=32)
    assert ImageSource.open(d, "--train-a", min_size=20).n_images == 2


def test_mixed_dtypes_are_allowed_and_reported(tmp_path, caplog):
    d = tmp_path / "a"
    d.mkdir()
    write_tiff(d / "a.tif", np.zeros((8, 8), np.uint8))
    write_tiff(d / "b.tif", np.zeros((8, 8), np.uint16))
    write_tiff(d / "c.tif", np.zeros((8, 8), np.uint16))
    with caplog.at_level(logging.WARNING, logger="cyclesr_deploy"):
        src = ImageSource.open(d, "--train-a", min_size=8)
    assert src.dtype == "mixed(uint16,uint8)"
    assert src.dtypes == {"uint8": 1, "uint16": 2}
    assert "mixed pixel types" in caplog.text
    assert all(src.read(i).dtype == np.float32 for i in range(3))


def test_describe_is_json_and_source_pickles(tmp_path):
    d = _folder(tmp_path, "a", _ramp_images(2, 8, 10))
    src = ImageSource.open(d, "--train-a", min_size=8)
    info = json.loads(json.dumps(describe(src)))
    assert info["n_images"] == 2 and info["dtype"] == "float32"
    assert info["pixel_size_um"] == pytest.approx(0.05)
    assert info["shape_min"] == [8, 10] and info["n_skipped"] == 0
    src.read(0)  # an open handle must not break pickling
    clone = pickle.loads(pickle.dumps(src))
    np.testing.assert_array_equal(clone.read(1), src.read(1))


# -- percentiles ---------------------------------------------------------------------------


def test_percentiles_match_numpy_and_subsampling_is_close(tmp_path, rng):
    imgs = [rng.gamma(2.0, 100.0, size=(60, 50 + 10 * k)).astype(np.float32) for k in range(6)]
    src = ImageSource.open(_folder(tmp_path, "a", imgs), "--train-a", min_size=8)
    everything = np.concatenate([im.ravel() for im in imgs]).astype(np.float64)
    want = np.percentile(everything, [1.0, 99.0])
    exact = estimate_percentiles(src, 1.0, 99.0, rng=np.random.default_rng(0))
    np.testing.assert_allclose(exact, want, rtol=1e-6)
    approx = estimate_percentiles(
        src, 1.0, 99.0, max_pixels=5_000, max_images=4, rng=np.random.default_rng(1)
    )
    np.testing.assert_allclose(approx, want, rtol=0.1)


def test_percentiles_read_each_image_at_most_once(tmp_path, rng, monkeypatch):
    imgs = [rng.random((16, 16), dtype=np.float32) for _ in range(5)]
    src = ImageSource.open(_folder(tmp_path, "a", imgs), "--train-a", min_size=8)
    reads: list[int] = []
    original = src.read_native
    monkeypatch.setattr(src, "read_native", lambda i: reads.append(i) or original(i))
    sizes: list[int] = []
    percentile = np.percentile
    monkeypatch.setattr(np, "percentile", lambda v, q: sizes.append(v.size) or percentile(v, q))
    estimate_percentiles(src, 0.1, 99.9, max_pixels=100, max_images=3, rng=rng)
    assert len(reads) == len(set(reads)) == 3
    assert 90 <= sizes[0] <= 100  # about max_pixels, spread over the 3 images


def test_percentiles_of_constant_data_are_an_error(tmp_path, rng):
    src = ImageSource.open(
        _folder(tmp_path, "a", [np.full((16, 16), 5, np.uint16)] * 2), "--train-b", min_size=8
    )
    with pytest.raises(InputError, match=r"--train-b: .*constant"):
        estimate_percentiles(src, 0.1, 99.9, rng=rng)
    with pytest.raises(InputError, match="pmin"):
        estimate_percentiles(src, 50, 10, rng=rng)


# -- crop samplers -------------------------------------------------------------------------


def test_crops_have_shape_dtype_and_normalized_range(tmp_path):
    cfg = SynthConfig(size=64)
    generate_dataset(tmp_path / "d", cfg, n_train=4, n_test=0)
    src = ImageSource.open(tmp_path / "d" / "trainA", "--train-a", min_size=32)
    low, high = estimate_percentiles(src, 0, 100, rng=np.random.default_rng(0))
    norm = NormalizationConfig(pmin=0, pmax=100, low_a=low, high_a=high)
    sampler = CropSampler(src, lambda x: norm.to_model(x, "a"), 32)
    batch = sampler.sample(6, np.random.default_rng(3))
    assert batch.shape == (6, 1, 32, 32) and batch.dtype == np.float32
    assert batch.min() >= -1 - 1e-5 and batch.max() <= 1 + 1e-5
    assert batch.std() > 0
    with pytest.raises(InputError, match=r"smaller than the 65 px crop"):
        CropSampler(src, identity, 65)


def _locate(crop: np.ndarray, img: np.ndarray) -> int:
    """The dihedral index k with crop == dihedral(region, k), region found by its min value."""
    c = crop.shape[-1]
    y, x = np.argwhere(img == crop.min())[0]  # ramps increase: a region's min is its corner
    region = img[y : y + c, x : x + c]
    matches = [k for k in range(8) if np.array_equal(dihedral(region, k), crop)]
    assert len(matches) == 1, "crop is not an exact transform of a source region"
    return matches[0]


def test_dihedral_augmentation_is_exact_and_covers_all_8(tmp_path):
    imgs = _ramp_images(3, 12, 14)
    src = ImageSource.open(_folder(tmp_path, "a", imgs), "--train-a", min_size=4)
    allpix = np.stack(imgs)
    rng = np.random.default_rng(7)
    seen = set()
    for crop in CropSampler(src, identity, 4).sample(200, rng)[:, 0]:
        seen.add(_locate(crop, allpix[int(crop.min()) // (12 * 14)]))
    assert seen == set(range(8))
    plain = CropSampler(src, identity, 4, augment=False).sample(50, rng)
    for crop in plain[:, 0]:
        assert _locate(crop, allpix[int(crop.min()) // (12 * 14)]) == 0


def test_same_rng_state_gives_the_same_batch(tmp_path):
    src = ImageSource.open(_folder(tmp_path, "a", _ramp_images(5, 16, 16)), "--train-a", min_size=8)
    rng = np.random.default_rng(42)
    warm = CropSampler(src, identity, 8, cache_images=2)
    warm.sample(10, rng)  # advance the generator and fill the cache
    state = rng.bit_generator.state
    first = warm.sample(8, rng)
    after_first = rng.bit_generator.state
    restored = np.random.default_rng(0)
    restored.bit_generator.state = json.loads(json.dumps(state))  # saved and loaded as JSON
    cold = CropSampler(src, identity, 8, cache_images=0)  # cache state must not matter
    np.testing.assert_array_equal(cold.sample(8, restored), first)
    assert restored.bit_generator.state == after_first
    assert not np.array_equal(warm.sample(8, rng), first)


def test_lru_cache_stays_bounded_and_avoids_rereads(tmp_path, monkeypatch):
    src = ImageSource.open(_folder(tmp_path, "a", _ramp_images(5, 8, 8)), "--train-a", min_size=4)
    reads: list[int] = []
    original = src.read_native
    monkeypatch.setattr(src, "read_native", lambda i: reads.append(i) or original(i))
    rng = np.random.default_rng(0)
    small = CropSampler(src, identity, 4, cache_images=2)
    for _ in range(20):
        small.sample(4, rng)
        assert len(small.cache) <= 2
    big = CropSampler(src, identity, 4, cache_images=5)
    reads.clear()
    for _ in range(20):
        big.sample(4, rng)
    assert sorted(reads) == [0, 1, 2, 3, 4]  # each image decoded once
    assert big.cache.hits == 80 - 5 and big.cache.misses == 5


# -- paired data ---------------------------------------------------------------------------


def test_paired_sampler_keeps_a_and_b_aligned(tmp_path):
    a_imgs = _ramp_images(3, 12, 16)
    pa = _folder(tmp_path, "a", a_imgs)
    pb = _folder(tmp_path, "b", [2 * im + 1 for im in a_imgs], suffix=".tiff")
    src_a = ImageSource.open(pa, "--train-a", min_size=4)
    src_b = ImageSource.open(pb, "--train-b", min_size=4)
    sampler = PairedCropSampler(src_a, src_b, identity, identity, 5)
    a, b = sampler.sample(64, np.random.default_rng(1))
    assert a.shape == b.shape == (64, 1, 5, 5)
    np.testing.assert_array_equal(b, 2 * a + 1)
    assert len({_locate(crop, a_imgs[int(crop.min()) // 192]) for crop in a[:, 0]}) > 4


def test_paired_sampler_scale_2_with_nearest_upsampled_b(tmp_path):
    a_imgs = _ramp_images(2, 10, 12)
    up = [np.repeat(np.repeat(im, 2, 0), 2, 1) for im in a_imgs]
    write_tiff(tmp_path / "a.tif", np.stack(a_imgs))
    write_tiff(tmp_path / "b.tif", np.stack(up))
    src_a = ImageSource.open(tmp_path / "a.tif", "--train-a", min_size=4)
    src_b = ImageSource.open(tmp_path / "b.tif", "--train-b", min_size=8)
    norm = NormalizationConfig(low_a=0, high_a=240, low_b=0, high_b=240)
    sampler = PairedCropSampler(
        src_a,
        src_b,
        lambda x: norm.to_model(x, "a"),
        lambda x: norm.to_model(x, "b"),
        4,
        scale=2,
    )
    a, b = sampler.sample(32, np.random.default_rng(2))
    assert a.shape == (32, 1, 4, 4) and b.shape == (32, 1, 8, 8)
    np.testing.assert_array_equal(b, np.repeat(np.repeat(a, 2, 2), 2, 3))
    with pytest.raises(InputError, match=r"exactly 2x"):
        PairedCropSampler(src_a, src_a, identity, identity, 4, scale=2)


def test_paired_mismatches_are_errors(tmp_path):
    pa = _folder(tmp_path, "a", _ramp_images(3, 8, 8))
    pb = tmp_path / "b"
    pb.mkdir()
    for name in ("000.tif", "001.tif", "extra.tif"):
        write_tiff(pb / name, np.zeros((8, 8), np.float32))
    src_a = ImageSource.open(pa, "--train-a", min_size=4)
    src_b = ImageSource.open(pb, "--train-b", min_size=4)
    with pytest.raises(
        InputError, match=r"missing from --train-b: 002.*missing from --train-a: extra"
    ):
        PairedCropSampler(src_a, src_b, identity, identity, 4)
    write_tiff(tmp_path / "s2.tif", np.zeros((2, 8, 8), np.float32))
    stack2 = ImageSource.open(tmp_path / "s2.tif", "--train-b", min_size=4)
    with pytest.raises(InputError, match=r"3 image\(s\) but --train-b has 2"):
        PairedCropSampler(src_a, stack2, identity, identity, 4)
    (pb / "extra.tif").unlink()
    write_tiff(pb / "002.tif", np.zeros((8, 9), np.float32))
    src_b = ImageSource.open(pb, "--train-b", min_size=4)
    with pytest.raises(InputError, match=r"002\.tif is 8x9 px but its pair 002\.tif"):
        PairedCropSampler(src_a, src_b, identity, identity, 4)


def test_load_validation_pairs(tmp_path):
    a_imgs = _ramp_images(3, 8, 8)
    pa = _folder(tmp_path, "a", a_imgs)
    pb = _folder(tmp_path, "b", [np.repeat(np.repeat(im, 2, 0), 2, 1) for im in a_imgs])
    pairs = load_validation_pairs(pa, pb)
    assert [p.name for p in pairs] == ["000", "001", "002"]
    assert isinstance(pairs[0], ValidationPair)
    assert pairs[1].a.dtype == pairs[1].b.dtype == np.float32
    np.testing.assert_array_equal(pairs[1].a, a_imgs[1])
    assert pairs[1].b.shape == (16, 16)
    assert len(load_validation_pairs(pa, pb, max_images=2)) == 2
    with pytest.raises(InputError, match="exactly 3x"):
        load_validation_pairs(pa, pb, scale=3, name_a="--val-a", name_b="--val-b")
    (pb / "002.tif").rename(pb / "zzz.tif")
    with pytest.raises(InputError, match=r"--val-a and --val-b must hold the same image names"):
        load_validation_pairs(pa, pb, name_a="--val-a", name_b="--val-b")
