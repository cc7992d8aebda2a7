"""``seqmodels-export``: a trained model as an ONNX graph in a self-contained directory
(``writer.export_model``), built from each task's plain network (``graphs``)."""
