"""The OME-Zarr layer behind the pipeline: TIFF in -> Zarr out, Zarr (NGFF 0.5 and 0.4) in ->
TIFF out, metadata validated by ome-zarr-models, pyramid levels from the stored level 0."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

pytest.importorskip("zarr")
pytest.importorskip("ome_zarr_models")

from cyclesr_deploy.errors import InputError
from cyclesr_deploy.runtime.formats import open_frames, output_path
from cyclesr_deploy.runtime.pipeline import EnhanceConfig, collect_inputs, enhance_files
from tests.conftest import FakeEngine
from tests.unit.test_pipeline import _model, _stack, _write


def _validated(path):
    """The ome-zarr-models v0.5 Image of ``path`` (raises when the group is not NGFF 0.5)."""
    import zarr
    from ome_zarr_models.v05.image import Image

    return Image.from_zarr(zarr.open_group(str(path), mode="r"))


def _write_ngff(path, data, version, axes, scale):
    """An OME-Zarr input written by ome-zarr-py (an independent writer)."""
    from ome_zarr.format import FormatV04, FormatV05
    from ome_zarr.writer import write_image

    fmt = FormatV05() if version == "0.5" else FormatV04()
    import zarr

    group = zarr.open_group(str(path), mode="w", zarr_format=3 if version == "0.5" else 2)
    write_image(
        data,
        group,
        axes=[{"name": a, "type": t} for a, t, _ in axes],
        fmt=fmt,
        scale_factors=(),
        scale={a: s for (a, _, _), s in zip(axes, scale, strict=True)},
        axes_units={a: u for a, _, u in axes if u},
    )
    return path


def test_tiff_in_zarr_out_metadata_validated(tmp_path, rng):
    data = _stack(rng, (3, 2, 20, 24))
    src = _write(
        tmp_path / "in" / "s.ome.tif",
        data,
        "TZYX",
        PhysicalSizeX=0.2,
        PhysicalSizeY=0.2,
        PhysicalSizeZ=0.5,
        TimeIncrement=3.0,
        TimeIncrementUnit="s",
    )
    cfg = EnhanceConfig(output_format="zarr", pyramid=2)
    summary = enhance_files([src], tmp_path / "out", FakeEngine("nearest2"), _model(2), cfg)
    assert summary.ok, summary.files
    out = tmp_path / "out" / "s.ome.zarr"
    assert summary.files[0].output == str(out)
    image = _validated(out)  # NGFF 0.5 on Zarr v3, by ome-zarr-models' own validator
    attrs = json.loads((out / "zarr.json").read_text())["attributes"]["ome"]
    assert attrs["version"] == "0.5"
    ms = image.ome_attributes.multiscales[0]
    assert [(a.name, a.type, a.unit) for a in ms.axes] == [
        ("t", "time", "second"),
        ("z", "space", "micrometer"),
        ("y", "space", "micrometer"),
        ("x", "space", "micrometer"),
    ]
    scales = [d.coordinateTransformations[0].scale for d in ms.datasets]
    assert scales[0] == pytest.approx([3.0, 0.5, 0.1, 0.1])  # pixel size / model scale 2
    assert scales[2] == pytest.approx([3.0, 0.5, 0.4, 0.4])
    import zarr

    group = zarr.open_group(str(out), mode="r")
    level0, level1 = np.asarray(group["0"]), np.asarray(group["1"])
    assert group["0"].metadata.dimension_names == ("t", "z", "y", "x")
    assert group["0"].chunks == (1, 1, 40, 48)  # one frame per chunk: blocks are aligned
    expected = np.repeat(np.repeat(data, 2, axis=-2), 2, axis=-1)  # nearest x2
    np.testing.assert_array_equal(level0, expected)
    assert group["2"].shape == (3, 2, 10, 12)
    mean = level0.reshape(3, 2, 20, 2, 24, 2).astype(np.float64).mean(axis=(3, 5))
    np.testing.assert_array_equal(level1, np.rint(mean).astype(np.uint16))
    assert not list((tmp_path / "out").glob("*.part"))


@pytest.mark.parametrize("version", ["0.5", "0.4"])
def test_zarr_in_tiff_out_and_zarr_out(tmp_path, rng, version):
    data = _stack(rng, (4, 1, 18, 22))  # a singleton channel axis, dropped like TIFF's
    axes = [("t", "time", "millisecond"), ("c", "channel", None)]
    axes += [("y", "space", "micrometer"), ("x", "space", "micrometer")]
    src = _write_ngff(tmp_path / "in" / "img.zarr", data, version, axes, (50.0, 1.0, 0.3, 0.3))
    assert collect_inputs([tmp_path / "in"]) == [src]  # a folder of .zarr images
    with open_frames(src) as reader:
        assert reader.info.axes == "TYX" and reader.info.pixel_size_um == pytest.approx(0.3)
    cfg = EnhanceConfig(output_format="tiff")
    summary = enhance_files([src], tmp_path / "tif", FakeEngine("identity"), _model(), cfg)
    assert summary.ok, summary.files
    tif = tmp_path / "tif" / "img.ome.tif"
    assert output_path(src, tmp_path / "tif", "tiff") == tif
    np.testing.assert_array_equal(tifffile.imread(tif), data[:, 0])
    with open_frames(tif) as reader:
        assert reader.info.axes == "TYX" and reader.info.pixel_size_um == pytest.approx(0.3)

    summary = enhance_files([src], tmp_path / "z", FakeEngine("nearest2"), _model(2))
    assert summary.ok, summary.files
    image = _validated(tmp_path / "z" / "img.zarr")  # written as 0.5 whatever it was read as
    ms = image.ome_attributes.multiscales[0]
    assert [a.name for a in ms.axes] == ["t", "c", "y", "x"]  # the input's axes, all of them
    assert ms.datasets[0].coordinateTransformations[0].scale == pytest.approx(
        [50.0, 1.0, 0.15, 0.15]
    )


def test_bad_frame_is_named_and_other_files_go_on(tmp_path, rng):
    bad = rng.random((3, 16, 16)).astype(np.float32)
    bad[1, 3, 4] = np.nan
    axes = [("t", "time", None), ("y", "space", None), ("x", "space", None)]
    _write_ngff(tmp_path / "in" / "bad.zarr", bad, "0.5", axes, (1.0, 1.0, 1.0))
    _write(tmp_path / "in" / "good.tif", _stack(rng, (2, 16, 16)), "TYX")
    inputs = collect_inputs([tmp_path / "in"])
    cfg = EnhanceConfig(output_format="zarr")
    summary = enhance_files(inputs, tmp_path / "out", FakeEngine("identity"), _model(), cfg)
    status = {f.input.rsplit("/", 1)[-1]: f for f in summary.files}
    assert status["good.tif"].status == "done"
    assert status["bad.zarr"].status == "failed"
    assert "bad.zarr: frame 1 contains NaN" in status["bad.zarr"].error
    assert not (tmp_path / "out" / "bad.zarr").exists()
    assert not (tmp_path / "out" / "bad.zarr.part").exists()  # removed on the error


def test_axes_ngff_cannot_express_are_refused(tmp_path, rng):
    src = _write(tmp_path / "in" / "zt.tif", _stack(rng, (2, 3, 16, 16)), "ZTYX")
    cfg = EnhanceConfig(output_format="zarr")
    summary = enhance_files([src], tmp_path / "out", FakeEngine("identity"), _model(), cfg)
    assert summary.files[0].status == "failed"
    assert "cannot be written as OME-Zarr" in summary.files[0].error


def test_not_an_ome_zarr_is_an_input_error(tmp_path):
    folder = tmp_path / "plain.zarr"
    folder.mkdir()
    (folder / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group"}')
    with pytest.raises(InputError, match="not a readable OME-Zarr image"):
        open_frames(folder)


def test_existing_zarr_output_is_skipped_or_replaced_whole(tmp_path, rng):
    src = _write(tmp_path / "in" / "s.tif", _stack(rng, (2, 16, 16)), "TYX")
    cfg = EnhanceConfig(output_format="zarr")
    out = tmp_path / "out" / "s.ome.zarr"
    assert enhance_files([src], tmp_path / "out", FakeEngine("identity"), _model(), cfg).ok
    again = enhance_files([src], tmp_path / "out", FakeEngine("plus1"), _model(), cfg)
    assert again.files[0].status == "skipped"
    before = _validated(out)
    cfg = cfg.model_copy(update={"overwrite": True, "pyramid": 1})
    assert enhance_files([src], tmp_path / "out", FakeEngine("identity"), _model(), cfg).ok
    assert len(_validated(out).ome_attributes.multiscales[0].datasets) == 2  # replaced whole
    assert len(before.ome_attributes.multiscales[0].datasets) == 1
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        ".cyclesr-output.lock",
        "cyclesr-manifest.json",
        "s.ome.zarr",
    ]  # no .part, no old copy left
