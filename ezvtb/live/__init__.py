"""Live inputs and outputs: tracker pose sources (iFacialMocap, OpenSeeFace, VMC, playback),
the tracker -> THA3 mapping, the One-Euro filter and frame sinks (raw, shared memory, mp4,
virtual camera). See docs/live.md."""
from __future__ import annotations

from ezvtb.live.filters import OneEuroFilter
from ezvtb.live.mapping import Mapper, MappingConfig, TrackerState
from ezvtb.live.sinks import FrameSink, open_sink
from ezvtb.live.source_base import PoseSample, PoseSource
from ezvtb.live.sources import open_source

__all__ = ["FrameSink", "Mapper", "MappingConfig", "OneEuroFilter", "PoseSample", "PoseSource", "TrackerState",
           "open_sink", "open_source"]
