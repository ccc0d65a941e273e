"""MXNet Gluon training: RecordIO data, recognition (ArcFace), detection (RetinaFace), export."""
