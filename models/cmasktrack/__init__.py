"""CMaskTrack R-CNN (occluded video instance segmentation): detector, temporal calibration, tracking head."""
from amodal.models.cmasktrack.calibration import TemporalCalibration
from amodal.models.cmasktrack.config import CMaskTrackConfig, tiny_config
from amodal.models.cmasktrack.model import (
    CMaskTrackRCNN,
    FrameDetections,
    InstanceTargets,
    PairBatch,
    LoadedCMaskTrack,
    PairOutputs,
    build_cmasktrack,
    cmasktrack_losses,
    load_cmasktrack,
)
from amodal.models.cmasktrack.online import OnlineTracker, TrackedFrame
from amodal.models.cmasktrack.track_head import MatchWeights, TrackHead, TrackMemory, match_tracks

__all__ = [
    "CMaskTrackConfig", "CMaskTrackRCNN", "FrameDetections", "InstanceTargets", "LoadedCMaskTrack", "MatchWeights", "OnlineTracker",
    "PairBatch", "PairOutputs", "TemporalCalibration", "TrackHead", "TrackMemory", "TrackedFrame",
    "build_cmasktrack", "cmasktrack_losses", "load_cmasktrack", "match_tracks", "tiny_config",
]
