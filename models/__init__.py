"""Roadside's own models: the detector, its training, evaluation and export to ONNX.

Needs the ``train`` extra (torch, onnx). The training and held-out data come
from the synthetic scene in :mod:`roadside.sim.synthetic`; letterboxing and YOLO-layout
decoding come from :mod:`roadside.vision.yolo`, exactly as the agent does them.
``models/`` imports neither ``edge/`` nor ``cloud/`` (``docs/architecture.md``).
"""
