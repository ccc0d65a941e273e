"""Gallery databases and batch identification with insightface ONNX models (detector + recognizer).

The face toolkit, also used by training's packer and detection teacher and by the demo:
``models`` (find and load the detector and recognizer), ``sources`` (list input images, one
extension list), ``faces`` (decode, detect, align, embed). Galleries: ``gallery`` (build, add,
remove, calibrate), ``gallery_store`` (the database in memory and on disk, search), ``index``
(faiss index kinds), ``calibration`` (threshold for a target FAR). ``identify`` (reports,
annotation, ground-truth metrics), ``tasks`` and ``job`` (the ``gallery`` and ``identify`` job
tasks). Nothing heavy is imported here.
"""
