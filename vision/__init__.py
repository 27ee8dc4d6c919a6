"""Image-model I/O that the agent (``edge/``) and the ML package (``models/``) both follow.

A detector is trained and evaluated in ``models/`` and run on the pole by
``edge/``; both must letterbox frames and read the YOLOv8/YOLO11 output the
same way, and neither may import the other, so that code lives here. Pure
array code: numpy and OpenCV, and nothing of Roadside's but ``shared``.

:mod:`roadside.vision.calibration` is the camera model both the agent (image points
to road metres and speeds) and the SUMO world (road users into frames) use.
"""
