"""ONNX statistics graph + tile graph for frozen-InstanceNorm tiling (export.frozen_onnx).

One tiny trained CycleGAN (ngf 4, 1 block) exported once per module to generator.stats.onnx and
generator.tile.onnx; ONNX Runtime (CPU) is checked against frozen_norm's PyTorch passes and,
end to end, tiled ORT inference against whole-frame PyTorch inference.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from cyclesr_deploy.model import FROZEN_ONNX

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")

from cyclesr_deploy.engines.frozen_stats import (  # noqa: E402
    BLOCKS,
    MAX_CROPS,
    WEIGHTS_NAME,
    crop_batch,
    crops_for,
    padded_weights,
)
from cyclesr_deploy.engines.frozen_torch import (  # noqa: E402
    compute_statistics,
    freeze_instance_norms,
    load_packed,
    packed_length,
    set_mode,
)
from cyclesr_deploy.errors import InputError  # noqa: E402
from cyclesr_deploy.export.frozen_onnx import (  # noqa: E402
    KEY_FROZEN_STATS,
    STATS_NAME,
    frozen_stats_info,
    stats_onnx_from_checkpoint,
    tile_onnx_from_checkpoint,
)
from cyclesr_deploy.export.onnx_export import load_generator  # noqa: E402
from cyclesr_deploy.export.parity import ort_session  # noqa: E402
from cyclesr_deploy.model import load_model  # noqa: E402
from cyclesr_deploy.onnx_metadata import read_onnx_metadata  # noqa: E402
from cyclesr_deploy.runtime.tiling import TilingConfig, predict_tiled  # noqa: E402
from cyclesr_deploy.synthetic import SynthConfig, simulate_pair  # noqa: E402

STATS_TOL = 1e-5  # max abs, relative to the vector's largest magnitude
EXACT_TOL = 1e-4  # max abs, output range [-1, 1]


def frame(shape: tuple[int, int], seed: int = 1) -> np.ndarray:
    """A synthetic LR frame (1, H, W) mapped to [-1, 1] by its min/max."""
    lr = simulate_pair(SynthConfig(size=max(shape)), seed).lr[: shape[0], : shape[1]]
    lr = lr.astype(np.float64)
    lo, hi = lr.min(), lr.max()
    return ((lr - lo) / (hi - lo) * 2 - 1).astype(np.float32)[None]


def tiling_for(rf: int, tile: int, batch_size: int = 4) -> TilingConfig:
    for ramp in (32, 16, 8, 0):
        try:
            return TilingConfig.for_model(rf, tile=tile, ramp=ramp, batch_size=batch_size)
        except InputError:
            continue
    raise AssertionError(f"tile {tile} cannot hold the halo of RF {rf}")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from tests.tiny_models import train_tiny_model

    folder = train_tiny_model(tmp_path_factory.mktemp("frozen-onnx"))
    stats = stats_onnx_from_checkpoint(folder, details=True)
    tile = tile_onnx_from_checkpoint(folder, details=True)
    model = load_model(folder)
    return {
        "folder": folder,
        "model": model,
        "stats": stats,
        "tile": tile,
        "stats_session": ort_session(stats.path),
        "tile_session": ort_session(tile.path),
    }


def generator(exported):
    return load_generator(exported["folder"], exported["model"], "ab")


def ort_stats(exported, x: np.ndarray) -> np.ndarray:
    feeds = {"input": x[None], WEIGHTS_NAME: padded_weights(np.ones(1))}
    return exported["stats_session"].run(None, feeds)[0]


def test_files_and_metadata(exported):
    folder = exported["folder"]
    stats, tile = exported["stats"], exported["tile"]
    assert stats.path == folder / FROZEN_ONNX["stats"]
    assert tile.path == folder / FROZEN_ONNX["tile"]
    assert not list(folder.glob("*.part"))
    gen = generator(exported)
    length = packed_length(freeze_instance_norms(gen))
    for result, graph in ((stats, "stats"), (tile, "tile")):
        info = frozen_stats_info(result.path)
        assert info["length"] == length == result.info["length"]
        assert info["layers"] == 7 and info["eps"] == 1e-5
        meta = read_onnx_metadata(result.path)  # the generator ONNX convention
        assert meta.model == exported["model"]
        assert meta.export["graph"] == graph and meta.precision == "fp32"
        proto = onnx.load(result.path)
        props = {p.key: p.value for p in proto.metadata_props}
        assert json.loads(props[KEY_FROZEN_STATS]) == info
    sess = exported["stats_session"]
    assert [i.name for i in sess.get_inputs()] == ["input", WEIGHTS_NAME]
    assert sess.get_inputs()[1].shape == [MAX_CROPS, BLOCKS, BLOCKS]  # static (TensorRT)
    assert [o.name for o in sess.get_outputs()] == [STATS_NAME]
    assert sess.get_outputs()[0].shape == [length]
    sess = exported["tile_session"]
    assert [i.name for i in sess.get_inputs()] == ["input", STATS_NAME]
    assert sess.get_inputs()[1].shape == [length]
    assert sess.get_inputs()[0].shape[0] == "batch"


def test_op_types(exported):
    for result in (exported["stats"], exported["tile"]):
        proto = onnx.load(result.path)
        for node in proto.graph.node:
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            assert not (node.op_type == "BatchNormalization" and attrs.get("training_mode", 0))
            if node.op_type == "Pad":
                assert attrs["mode"] == b"reflect"
    tile_ops = set(exported["tile"].op_types)
    # tiles are normalised with the given statistics only: no reduction, no instance norm
    assert not tile_ops & {"InstanceNormalization", "ReduceMean", "ReduceSum", "GlobalAveragePool"}
    assert {"Conv", "Slice", "Sqrt", "Sub", "Div"} <= tile_ops
    stats_ops = set(exported["stats"].op_types)
    assert "InstanceNormalization" not in stats_ops and "MatMul" in stats_ops  # block sums
    assert "Equal" in stats_ops  # one-hot block matrices
    assert "Tanh" not in stats_ops  # the generator's tail after the last norm is dropped


@pytest.mark.parametrize("shape", [(128, 96), (96, 160)])
def test_stats_graph_matches_record_statistics(exported, shape):
    x = frame(shape, seed=3)
    expected = compute_statistics(generator(exported), x, "whole").numpy()
    got = ort_stats(exported, x)
    assert got.shape == expected.shape == (exported["stats"].info["length"],)
    rel = float(np.abs(got - expected).max() / np.abs(expected).max())
    print(f"\nstats graph {shape}: max|ort - torch| / max|torch| = {rel:.2e}")
    assert rel <= STATS_TOL


@pytest.mark.parametrize("calibrate", [True, False])
def test_stats_graph_pools_crops_with_their_weights(exported, calibrate):
    """The engine's crops (crop_batch) and weights through the graph == frozen_norm's crops
    estimate (calibrated or equal weights), and the weights change the statistics."""
    x = frame((1024, 1024), seed=5)  # a frame with structure: the crops' means differ
    m = exported["model"].size_multiple
    batch, weights = crop_batch(x[None], m)
    crop, n = crops_for(x.shape, m)
    assert batch.shape == (n, 1, crop, crop) and n > 1
    assert weights.shape == (n, BLOCKS, BLOCKS) and (weights > 0).all()
    if not calibrate:
        weights = np.ones(n, dtype=np.float32)
    feeds = {"input": batch, WEIGHTS_NAME: padded_weights(weights)}
    got = exported["stats_session"].run(None, feeds)[0]
    expected = compute_statistics(generator(exported), x, "crops", calibrate=calibrate).numpy()
    rel = float(np.abs(got - expected).max() / np.abs(expected).max())
    print(f"\nweighted stats graph, calibrate={calibrate}: rel {rel:.2e}")
    assert rel <= STATS_TOL
    other = compute_statistics(generator(exported), x, "crops", calibrate=not calibrate).numpy()
    assert float(np.abs(other - expected).max() / np.abs(expected).max()) > 10 * STATS_TOL


def test_tile_graph_matches_frozen_mode(exported):
    gen = generator(exported)
    packed = ort_stats(exported, frame((128, 96), seed=3))
    tiles = np.stack([frame((64, 96), seed=s) for s in (5, 6, 7)])  # (3, 1, 64, 96)
    layers = freeze_instance_norms(gen)
    load_packed(layers, packed)
    set_mode(layers, "frozen")
    with torch.inference_mode():
        expected = gen(torch.from_numpy(tiles)).numpy()
    got = exported["tile_session"].run(None, {"input": tiles, STATS_NAME: packed})[0]
    err = float(np.abs(got - expected).max())
    print(f"\ntile graph 3x64x96: max|ort - torch frozen| = {err:.2e}")
    assert got.shape == expected.shape
    assert err <= EXACT_TOL
    # the statistics input is used: other statistics, other output
    other = exported["tile_session"].run(
        None, {"input": tiles, STATS_NAME: ort_stats(exported, tiles[0])}
    )[0]
    assert float(np.abs(other - got).max()) > 100 * EXACT_TOL


def test_tiled_ort_equals_whole_frame(exported):
    cfg = exported["model"].generator
    x = frame((256, 256), seed=1)
    with torch.inference_mode():
        whole = generator(exported)(torch.from_numpy(x)[None]).numpy()[0]
    packed = ort_stats(exported, x)
    session = exported["tile_session"]

    def predict(batch: np.ndarray) -> np.ndarray:
        return session.run(None, {"input": batch, STATS_NAME: packed})[0]

    tiling = tiling_for(cfg.receptive_field, 96)
    tiled = predict_tiled(x, predict, tiling)

    def per_tile(batch: np.ndarray) -> np.ndarray:  # naive: each tile's own statistics
        return np.concatenate(
            [
                session.run(None, {"input": t[None], STATS_NAME: ort_stats(exported, t)})[0]
                for t in batch
            ]
        )

    naive = predict_tiled(x, per_tile, tiling)
    err = float(np.abs(tiled - whole).max())
    err_naive = float(np.abs(naive - whole).max())
    print(
        f"\n256x256 tile 96 overlap {tiling.overlap}: max|ORT tiled - torch whole| = {err:.2e}, "
        f"naive per-tile stats {err_naive:.2e}"
    )
    assert tiled.shape == whole.shape
    assert err <= EXACT_TOL
    assert err_naive > 100 * EXACT_TOL


def test_overwrite_refused_then_allowed(exported):
    folder = exported["folder"]
    for export, name in (
        (stats_onnx_from_checkpoint, FROZEN_ONNX["stats"]),
        (tile_onnx_from_checkpoint, FROZEN_ONNX["tile"]),
    ):
        target = folder / name
        before = target.read_bytes()
        with pytest.raises(InputError, match="exists"):
            export(folder)
        assert target.read_bytes() == before
    path = stats_onnx_from_checkpoint(folder, overwrite=True)
    assert path == folder / FROZEN_ONNX["stats"]
    assert frozen_stats_info(path)["length"] == exported["stats"].info["length"]
    assert not list(folder.glob("*.part"))


def test_rejects_torchscript(exported):
    with pytest.raises(InputError, match="dynamo"):
        stats_onnx_from_checkpoint(exported["folder"], overwrite=True, dynamo=False)
