from __future__ import annotations

import errno
import hashlib
from pathlib import Path

import numpy as np
import pytest
import tifffile

from cyclesr_deploy import images, io
from cyclesr_deploy.errors import InputError


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_roundtrip_keeps_data_axes_pixel_size_and_description(tmp_path, rng):
    data = rng.integers(0, 65535, size=(3, 32, 40), dtype=np.uint16)
    path = images.write_tiff(tmp_path / "s.tif", data, pixel_size_um=0.045, description={"seed": 7})
    img = images.read_tiff(path)
    np.testing.assert_array_equal(img.data, data)
    assert img.axes == "TYX"
    assert img.pixel_size_um == pytest.approx(0.045)
    assert img.metadata == {"seed": "7"}
    assert not list(tmp_path.glob("*.part"))


def test_fixed_uuid_makes_files_byte_identical(tmp_path):
    data = np.arange(64, dtype=np.uint8).reshape(8, 8)
    uid = io.deterministic_uuid(3, "a")
    a = images.write_tiff(tmp_path / "a.tif", data, uid=uid)
    b = images.write_tiff(tmp_path / "b.tif", data, uid=uid)
    c = images.write_tiff(tmp_path / "c.tif", data, uid=io.deterministic_uuid(4, "a"))
    assert _sha(a) == _sha(b) != _sha(c)


@pytest.mark.parametrize(
    "failure",
    [OSError("262144 requested and 214512 written"), OSError(errno.ENOSPC, "No space left")],
)
def test_disk_full_names_the_file_keeps_previous_and_no_part(tmp_path, monkeypatch, failure):
    target = tmp_path / "x.tif"
    images.write_tiff(target, np.zeros((4, 4), np.uint16))
    before = _sha(target)
    real_write = tifffile.TiffWriter.write

    def short_write(self, *a, **k):
        real_write(self, *a, **k)  # some bytes land in the .part, then the disk is full
        raise failure

    monkeypatch.setattr(tifffile.TiffWriter, "write", short_write)
    with pytest.raises(OSError, match="no space left on device") as info:
        images.write_tiff(target, np.ones((4, 4), np.uint16))
    assert info.value.errno == errno.ENOSPC and str(target) in str(info.value)
    assert "requested" not in str(info.value)
    assert _sha(target) == before
    assert not list(tmp_path.glob("*.part"))


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
def test_real_enospc_from_dev_full(tmp_path):
    target = tmp_path / "y.tif"
    (tmp_path / "y.tif.part").symlink_to("/dev/full")  # every write: ENOSPC
    with pytest.raises(OSError, match="no space left on device") as info:
        images.write_tiff(target, np.ones((256, 256), np.uint16))
    assert str(target) in str(info.value)
    assert not target.exists() and not list(tmp_path.glob("*.part"))


def test_other_write_errors_are_not_called_disk_full(tmp_path, monkeypatch):
    def fail(self, *a, **k):
        raise OSError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(tifffile.TiffWriter, "write", fail)
    with pytest.raises(OSError, match="Permission denied"):
        images.write_tiff(tmp_path / "z.tif", np.ones((4, 4), np.uint16))
    assert not list(tmp_path.glob("*.part"))


def test_refuses_overwrite_when_asked(tmp_path):
    target = images.write_tiff(tmp_path / "x.tif", np.zeros((4, 4), np.uint8))
    with pytest.raises(FileExistsError):
        images.write_tiff(target, np.zeros((4, 4), np.uint8), overwrite=False)


def test_unsupported_dtype_and_bad_axes_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="dtype"):
        images.write_tiff(tmp_path / "x.tif", np.zeros((4, 4), np.int64))
    with pytest.raises(InputError, match="axes"):
        images.write_tiff(tmp_path / "x.tif", np.zeros((4, 4), np.uint8), axes="TYX")
    assert not (tmp_path / "x.tif").exists()


def test_imagej_resolution_is_read(tmp_path):
    path = tmp_path / "ij.tif"
    tifffile.imwrite(
        path,
        np.zeros((8, 8), np.uint16),
        imagej=True,
        resolution=(1 / 0.1, 1 / 0.1),
        metadata={"unit": "um"},
    )
    assert images.read_tiff(path).pixel_size_um == pytest.approx(0.1)


def test_read_image2d_drops_singletons_and_rejects_stacks(tmp_path):
    one = images.write_tiff(tmp_path / "one.tif", np.zeros((1, 8, 8), np.uint16))
    assert images.read_image2d(one).data.shape == (8, 8)
    stack = images.write_tiff(tmp_path / "st.tif", np.zeros((2, 8, 8), np.uint16))
    with pytest.raises(InputError, match="2-D"):
        images.read_image2d(stack, name="GT")


def test_missing_and_garbage_files_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        images.read_tiff(tmp_path / "nope.tif")
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"not a tiff at all")
    with pytest.raises(InputError, match="not a readable TIFF"):
        images.read_tiff(bad)


@pytest.mark.parametrize(("unit", "value", "expected_um"), [("nm", 45.0, 0.045), ("μm", 0.2, 0.2)])
def test_ome_pixel_size_units_are_converted(tmp_path, unit, value, expected_um):
    path = tmp_path / "u.ome.tif"
    meta = {"axes": "YX", "PhysicalSizeX": value, "PhysicalSizeXUnit": unit}
    tifffile.imwrite(path, np.zeros((8, 8), np.uint16), ome=True, metadata=meta)
    assert images.read_tiff(path).pixel_size_um == pytest.approx(expected_um)
