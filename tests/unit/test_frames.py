"""Streaming TIFF reading and writing (cyclesr_deploy.runtime.tiff)."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from cyclesr_deploy.errors import InputError
from cyclesr_deploy.images import read_tiff
from cyclesr_deploy.runtime.tiff import open_frames, output_info, read_frames, write_frames


def _data(rng, shape, dtype):
    if np.dtype(dtype).kind == "f":
        return rng.random(shape, dtype=np.float32)
    return rng.integers(0, np.iinfo(dtype).max, shape, endpoint=True).astype(dtype)


def _roundtrip(src, dst, scale=1, upsample=None):
    with open_frames(src) as reader:
        info = reader.info
        frames = (f.data if upsample is None else upsample(f.data) for f in reader)
        write_frames(dst, output_info(info, scale), frames)
    return info


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
@pytest.mark.parametrize(
    ("axes", "shape"),
    [("YX", (20, 24)), ("TYX", (3, 20, 24)), ("ZYX", (4, 16, 12)), ("TZYX", (2, 3, 8, 12))],
)
def test_ome_roundtrip_dtype_axes_pixel_size(tmp_path, rng, dtype, axes, shape):
    data = _data(rng, shape, dtype)
    src, dst = tmp_path / "in.ome.tif", tmp_path / "out" / "in.ome.tif"
    meta = {"axes": axes, "PhysicalSizeX": 0.13, "PhysicalSizeY": 0.13}
    tifffile.imwrite(src, data, ome=True, photometric="minisblack", metadata=meta)
    info = _roundtrip(src, dst)
    assert (info.axes, info.shape, info.dtype, info.kind) == (axes, shape, np.dtype(dtype), "ome")
    assert info.n_frames == int(np.prod(shape[:-2]))
    back = read_tiff(dst)
    assert back.axes == axes
    assert back.data.dtype == dtype
    np.testing.assert_array_equal(back.data, data)
    assert back.pixel_size_um == pytest.approx(0.13)
    assert not list(dst.parent.glob("*.part"))


def test_frames_are_read_one_page_at_a_time(tmp_path, rng, monkeypatch):
    data = _data(rng, (6, 16, 16), np.uint16)
    tifffile.imwrite(tmp_path / "s.tif", data, ome=True, metadata={"axes": "TYX"})
    calls = []
    original = tifffile.TiffPage.asarray  # TiffFrame.asarray delegates to it

    def spy(self, *a, **k):
        out = original(self, *a, **k)
        calls.append(out.shape)
        return out

    monkeypatch.setattr(tifffile.TiffPage, "asarray", spy)
    with open_frames(tmp_path / "s.tif") as reader:
        assert calls == []  # opening reads no pixels
        np.testing.assert_array_equal(reader.read(4), data[4])
        assert calls == [(16, 16)]
        assert reader.info.frame_coords(4) == {"T": 4}
    assert [f.index for f in read_frames(tmp_path / "s.tif")] == list(range(6))


def test_scale_two_divides_pixel_size_and_multiplies_resolution(tmp_path, rng):
    data = _data(rng, (3, 16, 20), np.uint16)
    src, dst = tmp_path / "a.ome.tif", tmp_path / "o" / "a.ome.tif"
    tifffile.imwrite(
        src,
        data,
        ome=True,
        photometric="minisblack",
        resolution=(1e4 / 0.2, 1e4 / 0.2),
        resolutionunit="CENTIMETER",
        metadata={"axes": "ZYX", "PhysicalSizeX": 0.2, "PhysicalSizeY": 0.2, "PhysicalSizeZ": 0.5},
    )
    _roundtrip(src, dst, scale=2, upsample=lambda f: f.repeat(2, 0).repeat(2, 1))
    with tifffile.TiffFile(dst) as tif:
        assert tif.series[0].shape == (3, 32, 40)
        xml = tif.ome_metadata
        x_res = tif.pages[0].tags["XResolution"].value
    assert 'PhysicalSizeX="0.1"' in xml and 'PhysicalSizeY="0.1"' in xml
    assert 'PhysicalSizeZ="0.5"' in xml  # Z is not resampled
    assert x_res[0] / x_res[1] == pytest.approx(2e4 / 0.2)
    with open_frames(dst) as reader:
        assert reader.info.pixel_size_um == pytest.approx(0.1)


def test_ome_metadata_is_carried_over(tmp_path, rng):
    data = _data(rng, (2, 3, 8, 8), np.uint16)
    meta = {
        "axes": "TZYX",
        "PhysicalSizeX": 0.1,
        "PhysicalSizeY": 0.1,
        "TimeIncrement": 2.5,
        "TimeIncrementUnit": "s",
        "Channel": {"Name": "GFP"},
        "Plane": {"PositionZ": [0.0, 0.5, 1.0] * 2},
        "Name": "my acquisition",
    }
    src, dst = tmp_path / "a.ome.tif", tmp_path / "o" / "a.ome.tif"
    tifffile.imwrite(src, data, ome=True, photometric="minisblack", metadata=meta)
    _roundtrip(src, dst, scale=2, upsample=lambda f: f.repeat(2, 0).repeat(2, 1))
    with tifffile.TiffFile(dst) as tif:
        xml = tif.ome_metadata
        assert tif.series[0].axes == "TZYX"
        assert tif.series[0].shape == (2, 3, 16, 16)
    for text in ('Name="GFP"', 'TimeIncrement="2.5"', 'PositionZ="0.5"', "my acquisition"):
        assert text in xml
    assert 'SizeX="16"' in xml and "cyclesr-deploy" in xml
    assert xml.count("<TiffData") == 1


def test_imagej_metadata_is_carried_over(tmp_path, rng):
    data = _data(rng, (3, 16, 20), np.float32)
    src, dst = tmp_path / "ij.tif", tmp_path / "o" / "ij.tif"
    tifffile.imwrite(
        src,
        data,
        imagej=True,
        resolution=(5.0, 5.0),
        metadata={"axes": "ZYX", "unit": "um", "spacing": 0.7, "Labels": ["a", "b", "c"]},
    )
    _roundtrip(src, dst, scale=2, upsample=lambda f: f.repeat(2, 0).repeat(2, 1))
    with tifffile.TiffFile(dst) as tif:
        ij = tif.imagej_metadata
        assert tif.series[0].axes == "ZYX"
    assert ij["unit"] == "um" and ij["spacing"] == pytest.approx(0.7)
    assert ij["Labels"] == ["a", "b", "c"]
    with open_frames(dst) as reader:
        assert reader.info.pixel_size_um == pytest.approx(0.1)  # 1 / 5 px/um, halved


def test_plain_multipage_keeps_its_axes(tmp_path, rng):
    data = _data(rng, (4, 8, 12), np.uint16)
    tifffile.imwrite(tmp_path / "p.tif", data, shaped=False, photometric="minisblack")
    info = _roundtrip(tmp_path / "p.tif", tmp_path / "o" / "p.tif")
    assert info.axes == "IYX"
    back = read_tiff(tmp_path / "o" / "p.tif")
    assert back.axes == "IYX"
    np.testing.assert_array_equal(back.data, data)


def test_singleton_channel_is_dropped(tmp_path, rng):
    data = _data(rng, (1, 8, 12), np.uint16)
    tifffile.imwrite(tmp_path / "c.tif", data, ome=True, metadata={"axes": "CYX"})
    with open_frames(tmp_path / "c.tif") as reader:
        assert (reader.info.axes, reader.info.n_frames) == ("YX", 1)
        np.testing.assert_array_equal(reader.read(0), data[0])


def test_rejections_name_the_file(tmp_path, rng):
    cases = {
        "rgb.tif": (np.zeros((8, 8, 3), np.uint8), {"photometric": "rgb"}, "RGB"),
        "c3.tif": (
            np.zeros((3, 8, 8), np.uint16),
            {"ome": True, "metadata": {"axes": "CYX"}},
            "3 channels",
        ),
        "cplx.tif": (np.zeros((8, 8), np.complex64), {}, "complex"),
        "i16.tif": (np.zeros((8, 8), np.int16), {}, "int16"),
        "empty.tif": (np.zeros((0, 8), np.uint16), {}, "not a 2-D image"),
    }
    for name, (data, kwargs, msg) in cases.items():
        with pytest.warns(UserWarning) if data.size == 0 else _nullcontext():
            tifffile.imwrite(tmp_path / name, data, **kwargs)
        with pytest.raises(InputError, match=msg) as exc:
            open_frames(tmp_path / name)
        assert name in str(exc.value)
    with pytest.raises(InputError, match="no such file"):
        open_frames(tmp_path / "missing.tif")


def _nullcontext():
    import contextlib

    return contextlib.nullcontext()


def test_nan_frame_is_rejected_when_read(tmp_path, rng):
    data = _data(rng, (3, 8, 8), np.float32)
    data[1, 2, 3] = np.nan
    tifffile.imwrite(tmp_path / "n.tif", data, ome=True, metadata={"axes": "TYX"})
    with open_frames(tmp_path / "n.tif") as reader:
        reader.read(0)
        with pytest.raises(InputError, match="frame 1 contains NaN"):
            reader.read(1)


@pytest.mark.parametrize("fraction", [0.02, 0.5, 0.97])
def test_truncated_file_is_reported(tmp_path, rng, fraction):
    data = _data(rng, (5, 64, 64), np.uint16)
    tifffile.imwrite(tmp_path / "full.tif", data, ome=True, metadata={"axes": "TYX"})
    raw = (tmp_path / "full.tif").read_bytes()
    (tmp_path / "cut.tif").write_bytes(raw[: int(len(raw) * fraction)])
    with pytest.raises(InputError, match=r"cut\.tif"), open_frames(tmp_path / "cut.tif") as reader:
        for _ in reader:
            pass


def test_write_is_atomic_and_counts_frames(tmp_path, rng):
    data = _data(rng, (3, 8, 8), np.uint16)
    tifffile.imwrite(tmp_path / "a.tif", data, ome=True, metadata={"axes": "TYX"})
    with open_frames(tmp_path / "a.tif") as reader:
        info = output_info(reader.info)
    target = tmp_path / "o" / "a.tif"

    def failing():
        yield data[0]
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        write_frames(target, info, failing())
    with pytest.raises(ValueError, match="only 2 of 3"):
        write_frames(target, info, iter(data[:2]))
    with pytest.raises(ValueError, match="more frames"):
        write_frames(target, info, iter(np.concatenate([data, data])))
    with pytest.raises(ValueError, match="expected uint16"):
        write_frames(target, info, iter(data.astype(np.float32)))
    assert not target.exists() and not list(target.parent.glob("*"))
    write_frames(target, info, iter(data))
    with pytest.raises(FileExistsError):
        write_frames(target, info, iter(data))
    write_frames(target, info, iter(data[::-1]), overwrite=True)
    np.testing.assert_array_equal(tifffile.imread(target), data[::-1])


def test_bigtiff_on_request(tmp_path, rng):
    data = _data(rng, (2, 8, 8), np.uint16)
    tifffile.imwrite(tmp_path / "a.tif", data, ome=True, metadata={"axes": "TYX"})
    with open_frames(tmp_path / "a.tif") as reader:
        write_frames(tmp_path / "o.tif", output_info(reader.info), iter(data), bigtiff=True)
    with tifffile.TiffFile(tmp_path / "o.tif") as tif:
        assert tif.is_bigtiff


def _huge_header(path, side: int) -> None:
    """A complete TIFF whose header announces side x side uint16 pixels (one tiny zlib strip)."""
    tifffile.imwrite(
        path, np.zeros((16, 16), np.uint16), compression="zlib", metadata=None, rowsperstrip=16
    )
    with tifffile.TiffFile(path, mode="r+b") as tif:
        for name in ("ImageWidth", "ImageLength", "RowsPerStrip"):
            tif.pages[0].tags[name].overwrite(side, dtype="I")


def test_frame_larger_than_available_memory_is_refused_before_allocating(tmp_path, monkeypatch):
    import cyclesr_deploy.runtime.tiff as frames_mod
    from cyclesr_deploy import images

    path = tmp_path / "huge.tif"
    _huge_header(path, 100_000)
    monkeypatch.setattr(frames_mod, "available_memory", lambda: 8 * 2**30)

    def no_decode(*a, **k):
        raise AssertionError("pixels decoded")

    monkeypatch.setattr(tifffile.TiffPage, "asarray", no_decode)
    for read in (open_frames, images.read_tiff, lambda p: frames_mod.read_page(p, 0)):
        with pytest.raises(InputError, match=r"100000 x 100000 uint16 .* 18\.6 GiB") as info:
            read(path)
        assert str(path) in str(info.value)


def test_available_memory_is_known_here_and_refuses_a_terabyte_frame(tmp_path):
    from cyclesr_deploy.runtime.tiff import available_memory

    assert available_memory() is not None and available_memory() > 2**20
    path = tmp_path / "tera.tif"
    _huge_header(path, 1_000_000)  # 1.8 TiB decoded
    with pytest.raises(InputError, match="1000000 x 1000000"):
        open_frames(path)


def test_growing_stack_appender_keeps_axes_and_pixel_size(tmp_path, rng):
    from cyclesr_deploy.runtime.tiff import StackAppender, probe_pages

    data = rng.integers(0, 999, size=(3, 16, 20), dtype=np.uint16)
    src = tmp_path / "in.ome.tif"
    meta = {"axes": "TYX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5}
    tifffile.imwrite(src, data, ome=True, metadata=meta)
    info = output_info(probe_pages(src).info, scale=2)
    for n in (3, 2):  # all announced frames (the input's OME-XML), or fewer (stopped early)
        target = tmp_path / f"out{n}.tif"
        app = StackAppender(target, info)
        for i in range(n):
            assert not target.exists()
            app.append(np.repeat(np.repeat(data[i], 2, 0), 2, 1))
        assert app.close() == target and not app.part.exists()
        with open_frames(target) as reader:
            assert reader.info.axes == ("TYX" if n > 1 else "YX")
            assert reader.info.shape == (n, 32, 40)
            assert reader.info.pixel_size_um == pytest.approx(0.25)
            np.testing.assert_array_equal(reader.read(n - 1)[::2, ::2], data[n - 1])


def test_unnamed_page_stack_comes_out_t_with_resolution_pixel_size(tmp_path, rng):
    from cyclesr_deploy.runtime.tiff import StackAppender, probe_pages

    src = tmp_path / "plain.tif"
    with tifffile.TiffWriter(src) as tw:
        for i in range(2):
            tw.write(
                np.full((8, 8), i, np.uint16), metadata=None, resolution=(2e4, 2e4),
                resolutionunit=3,
            )  # fmt: skip
    probe = probe_pages(src)
    assert probe.ifds == 2 and probe.complete == 2
    app = StackAppender(tmp_path / "o.tif", output_info(probe.info, scale=1))
    for i in range(2):
        app.append(np.full((8, 8), i, np.uint16))
    with open_frames(app.close()) as reader:
        assert reader.info.axes == "TYX" and reader.info.pixel_size_um == pytest.approx(0.5)


def test_appender_failure_removes_the_part(tmp_path, monkeypatch):
    from cyclesr_deploy.runtime.tiff import StackAppender, StackInfo

    info = StackInfo(None, "TYX", (2, 8, 8), np.dtype(np.uint16))
    app = StackAppender(tmp_path / "o.tif", info)
    app.append(np.zeros((8, 8), np.uint16))

    def full(*a, **k):
        raise OSError("262144 requested and 214512 written")

    monkeypatch.setattr(tifffile.TiffWriter, "write", full)
    with pytest.raises(OSError, match=r"no space left on device .*o\.tif"):
        app.append(np.zeros((8, 8), np.uint16))
    assert not app.part.exists() and not (tmp_path / "o.tif").exists()
