"""Running detectors on frames: pre/post-processing (``yolo``) and the engines."""
