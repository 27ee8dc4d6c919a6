"""Roadside's own models: the synthetic scene, the detector, training and export.

``models.synthetic`` needs only numpy and OpenCV (edge devices use it as a
fake camera); the other modules need the ``train`` extra (torch, onnx).
"""
