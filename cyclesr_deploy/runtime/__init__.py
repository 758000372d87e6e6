"""The runtime: every frame that any door (``cyclesr enhance``, ``cyclesr watch``, the Python
:class:`~cyclesr_deploy.runtime.enhancer.Enhancer`, ``cyclesr bench latency``, the demo) enhances
goes through these modules, and only these (docs/architecture.md draws the path of one frame):

* :mod:`~cyclesr_deploy.runtime.runner`: the one frame runner (plan, normalize, gather, infer,
  blend, map back) and its settings, ``EnhanceConfig``;
* :mod:`~cyclesr_deploy.runtime.tiling`: tile plans, the gather loop and the blender (numpy);
* :mod:`~cyclesr_deploy.runtime.tiff`: the TIFF layer (reading, complete-page detection,
  writing frames and growing stacks with their metadata);
* :mod:`~cyclesr_deploy.runtime.omezarr`: the OME-Zarr layer (the same reader/writer interface;
  zarr imported lazily), :mod:`~cyclesr_deploy.runtime.formats`: which layer a path belongs to;
* :mod:`~cyclesr_deploy.runtime.manifest`: the output folder's manifest and lock;
* :mod:`~cyclesr_deploy.runtime.pipeline` (files, threads and bounded queues),
  :mod:`~cyclesr_deploy.runtime.watch` (+ ``watch_scan``, ``watch_output``: files arriving
  during acquisition), :mod:`~cyclesr_deploy.runtime.cluster` (Dask workers, dask imported
  lazily) and :mod:`~cyclesr_deploy.runtime.enhancer` (frames in memory) only schedule runner
  calls.

Engines come from :func:`cyclesr_deploy.engines.open_engine` (the one engine factory) and model
folders from :mod:`cyclesr_deploy.model`. The runtime never imports ``export/`` or
``training/`` (tested). Importing this package loads nothing.
"""
