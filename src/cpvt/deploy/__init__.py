"""The deployment wing: loading a trained run (``load_run``), prediction, ONNX / torch.export files and
conversion of other projects' weights. Imports the core and the training wing (its evaluation transform)."""
