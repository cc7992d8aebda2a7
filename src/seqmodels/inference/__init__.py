"""Exported models (``seqmodels-export``) run with onnxruntime and numpy: no torch, no
Lightning. ``bundle.ExportedModel`` reads a directory; ``commands`` are seqmodels-predict and
seqmodels-generate over one."""
