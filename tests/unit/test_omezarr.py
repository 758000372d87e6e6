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


def _write_ngff(path, data, version, axes, scale, chunks=None):
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
        storage_options={"chunks": chunks} if chunks else None,
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


def test_axes_refused_before_any_frame_is_computed(tmp_path, rng):
    """Z, a custom axis, Y, X passes 'T first, one custom axis' but not NGFF 0.5 (space axes
    last): refused when the output is planned, the engine never called."""
    src = _write(tmp_path / "in" / "zq.tif", _stack(rng, (2, 3, 16, 16)), "ZQYX")
    engine = FakeEngine("identity")
    cfg = EnhanceConfig(output_format="zarr")
    summary = enhance_files([src], tmp_path / "out", engine, _model(), cfg)
    assert summary.files[0].status == "failed"
    assert "cannot be written as OME-Zarr" in summary.files[0].error
    assert "space axes must be at the end" in summary.files[0].error
    assert engine.calls == 0
    assert not list((tmp_path / "out").glob("*.zarr*"))


def test_scale_and_translation_register_pixel_centres(tmp_path, rng):
    """An uncalibrated TIFF and an uncalibrated Zarr get the same Y/X scale (1 / model scale);
    level 0 of an s-times upscaled grid starts at origin - in/2 + out/2, pyramid level k at
    origin - in/2 + scale_k/2 (the 2 x 2 means cover the same area)."""
    data = _stack(rng, (2, 16, 16))
    tif = _write(tmp_path / "in" / "u.tif", data, "TYX")
    axes = [("t", "time", None), ("y", "space", None), ("x", "space", None)]
    zin = _write_ngff(tmp_path / "in" / "u.zarr", data, "0.5", axes, (1.0, 1.0, 1.0))
    cfg = EnhanceConfig(output_format="zarr", pyramid=1)
    summary = enhance_files([tif, zin], tmp_path / "out", FakeEngine("nearest2"), _model(2), cfg)
    assert summary.ok, summary.files
    for name in ("u.ome.zarr", "u.zarr"):
        ms = _validated(tmp_path / "out" / name).ome_attributes.multiscales[0]
        (s0, t0), (s1, t1) = (
            [t.scale if t.type == "scale" else t.translation for t in d.coordinateTransformations]
            for d in ms.datasets
        )
        assert s0 == pytest.approx([1.0, 0.5, 0.5]), name
        assert t0 == pytest.approx([0.0, -0.25, -0.25]), name
        assert s1 == pytest.approx([1.0, 1.0, 1.0]), name
        assert t1 == pytest.approx([0.0, 0.0, 0.0]), name  # one input pixel per level-1 pixel


def test_zarr_input_translation_and_global_transform_are_kept(tmp_path, rng):
    import zarr

    from cyclesr_deploy.runtime.tiff import output_info

    axes = [("t", "time", None), ("y", "space", "micrometer"), ("x", "space", "micrometer")]
    src = _write_ngff(tmp_path / "g.zarr", _stack(rng, (2, 8, 8)), "0.5", axes, (1.0, 0.3, 0.3))
    group = zarr.open_group(str(src), mode="r+")
    ome = dict(group.attrs["ome"])
    ms = ome["multiscales"][0]
    ms["datasets"][0]["coordinateTransformations"] = [
        {"type": "scale", "scale": [1.0, 0.3, 0.3]},
        {"type": "translation", "translation": [0.0, 10.0, 20.0]},
    ]
    ms["coordinateTransformations"] = [
        {"type": "scale", "scale": [1.0, 2.0, 2.0]},
        {"type": "translation", "translation": [0.0, 1.0, 1.0]},
    ]
    group.attrs["ome"] = ome
    with open_frames(src) as reader:
        ngff = reader.info.ngff
        out = output_info(reader.info, 2).ngff
    assert ngff.scale == pytest.approx((1.0, 0.6, 0.6))  # 0.3 x the global 2
    assert ngff.translation == pytest.approx((0.0, 21.0, 41.0))  # 2 x (10, 20) + 1
    assert out.scale == pytest.approx((1.0, 0.3, 0.3))
    assert out.translation == pytest.approx((0.0, 21.0 - 0.15, 41.0 - 0.15))
    level2 = out.resampled(4.0)  # pixel 1.2: centre of the first 2 x 2 input pixels
    assert level2.translation == pytest.approx((0.0, 21.3, 41.3))


def test_finish_run_again_after_its_rename_is_done(tmp_path, rng):
    """A worker lost after renaming its output: the finish task runs again and succeeds."""
    from cyclesr_deploy.runtime.omezarr import ZarrOutput
    from cyclesr_deploy.runtime.tiff import output_info

    src = _write(tmp_path / "s.tif", _stack(rng, (2, 16, 16)), "TYX")
    with open_frames(src) as reader:
        info = output_info(reader.info, 1)
    for overwrite in (False, True):
        out = ZarrOutput(tmp_path / f"o{overwrite}.ome.zarr", info)
        out.create()
        out.write(0, np.ones((16, 16), np.uint16))
        out.write(1, np.ones((16, 16), np.uint16))
        assert out.finish(overwrite=overwrite) == out.target
        assert out.finish(overwrite=overwrite) == out.target  # the retry
        _validated(out.target)
    other = ZarrOutput(tmp_path / "oFalse.ome.zarr", output_info(info, 2))
    with pytest.raises(FileExistsError):  # not this output's shape: not taken as done
        other.finish()


def test_zarr_input_rewritten_in_place_changes_its_fingerprint(tmp_path, rng):
    import time

    import zarr

    from cyclesr_deploy.runtime.formats import input_stat

    axes = [("t", "time", None), ("y", "space", None), ("x", "space", None)]
    src = _write_ngff(tmp_path / "r.zarr", _stack(rng, (3, 8, 8)), "0.5", axes, (1, 1, 1))
    before, folder = input_stat(src), src.stat()
    time.sleep(0.01)
    group = zarr.open_group(str(src), mode="r+")
    arr = group[group.attrs["ome"]["multiscales"][0]["datasets"][0]["path"]]
    arr[1] = np.asarray(arr[1]) + 1  # a chunk rewritten in place
    assert src.stat().st_mtime_ns == folder.st_mtime_ns  # the folder's own stat: unchanged
    assert input_stat(src) != before


def test_missing_zarr_extra_on_python_3_10_says_why(monkeypatch):
    import types

    from cyclesr_deploy.runtime import omezarr

    assert "Python 3.11" not in omezarr.zarr_purpose()
    monkeypatch.setattr(omezarr, "sys", types.SimpleNamespace(version_info=(3, 10, 14)))
    assert "needs Python 3.11 or newer" in omezarr.zarr_purpose()
    monkeypatch.setattr(omezarr, "require", _missing)
    with pytest.raises(ImportError, match=r"Python 3\.11 or newer.*cyclesr-deploy\[zarr\]"):
        omezarr.ZarrFrameReader(".")


def _missing(module, extra, purpose):
    from cyclesr_deploy.errors import MissingExtraError

    raise MissingExtraError(module, extra, purpose)
