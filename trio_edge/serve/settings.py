"""ServeSettings: what a trio-serve server allows, checked once when it is made."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .. import defaults
from ..errors import InputError

MIB = 1024 * 1024
REPLICA_HEADER = "x-trio-replica"  # names the replica that answered (Ray Serve)
LIMIT_OPTIONS = {"max_body_bytes": ("--max-body-mb", MIB), "max_image_bytes": ("--max-image-mb", MIB),
                 "max_image_pixels": ("--max-image-pixels", 1), "max_video_bytes": ("--max-video-mb", MIB),
                 "max_video_seconds": ("--max-video-seconds", 1)}  # field -> (the option that sets it, its unit)


@dataclass(frozen=True)
class ServeSettings:
    model_name: str  # the id clients pass as `model` and /v1/models lists
    api_key: str | None = None  # None: no authentication (bind to 127.0.0.1 then)
    max_queue: int = defaults.SERVE_MAX_QUEUE
    timeout: float = defaults.SERVE_TIMEOUT
    allow_remote_images: bool = False
    max_body_bytes: int = int(defaults.SERVE_MAX_BODY_MB * MIB)
    max_image_bytes: int = int(defaults.SERVE_MAX_IMAGE_MB * MIB)
    max_image_pixels: int = defaults.SERVE_MAX_IMAGE_PIXELS  # also every frame of a video
    max_video_bytes: int = int(defaults.SERVE_MAX_VIDEO_MB * MIB)
    max_video_seconds: float = defaults.SERVE_MAX_VIDEO_SECONDS

    def __post_init__(self):
        if not self.model_name or not self.model_name.strip():
            raise InputError("the served model name is empty; pass --model-name NAME")
        if isinstance(self.max_queue, bool) or not isinstance(self.max_queue, int) or self.max_queue < 0:
            raise InputError(f"--max-queue must be a whole number >= 0, got {self.max_queue!r}")
        if not (isinstance(self.timeout, (int, float)) and math.isfinite(self.timeout) and self.timeout > 0):
            raise InputError(f"--timeout must be a positive number of seconds, got {self.timeout!r}")
        for name, (option, unit) in LIMIT_OPTIONS.items():
            if not getattr(self, name) > 0:
                raise InputError(f"{option} must be positive, got {getattr(self, name) / unit:g}")
        if self.api_key is not None and not self.api_key.strip():
            raise InputError("the API key is empty; pass a non-empty --api-key or none")
