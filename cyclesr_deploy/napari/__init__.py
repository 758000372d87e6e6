"""napari plugin (extra ``[napari]``): a dock widget that enhances image layers with the frame
runner of ``cyclesr enhance`` (:mod:`._widget`), and synthetic sample data (:mod:`._work`).

Registered with napari through the npe2 manifest ``napari.yaml`` (entry point
``napari.manifest``). Importing this package imports neither napari nor Qt: the widget module
does, when napari asks for the widget.
"""
