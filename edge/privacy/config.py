"""What may leave the device: the privacy switches, apart from the models that enforce them.

Settings import this module at every start; the face and plate models
(:mod:`roadside.edge.privacy.redact`, which pulls in ``onnx`` and a second
onnxruntime session) are imported and loaded only where images can leave
the device: by the hard-example worker, when ``samples.enabled`` (which
needs ``images_leave_device``) is set.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

Polygon = list[tuple[float, float]]


class PrivacyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    images_leave_device: bool = False  # the default: only metadata leaves
    blur_faces: bool = True
    blur_plates: bool = True
    face_threshold: float = Field(default=0.4, gt=0, lt=1)
    masks: list[Polygon] = Field(default_factory=list)  # filled solid, e.g. windows of homes
    margin: float = Field(default=0.15, ge=0, le=1)  # grow each box by this fraction: blur a little wide
