"""Gallery databases and batch identification with insightface ONNX models (detector + recognizer).

Modules: ``models`` (find and load the two ONNX models), ``sources`` (list input images),
``faces`` (decode, detect, align, embed), ``gallery`` (the database: build, add, remove, calibrate,
search), ``identify`` (reports, annotation, ground-truth metrics), ``tasks`` and ``job`` (the
``gallery`` and ``identify`` job tasks). Nothing heavy is imported here.
"""
