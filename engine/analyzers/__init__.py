"""The analyzers the engine can run, by the name used on the command line."""
from __future__ import annotations

from amodal.engine.analyzer import Analyzer
from amodal.engine.config import AnalyzerConfig
from amodal.errors import ConfigError

ANALYZER_NAMES = ("identity", "maskrcnn", "ovis", "reid")


def build_analyzer(config: AnalyzerConfig) -> Analyzer:
    if config.name == "identity":
        from amodal.engine.analyzers.identity import IdentityAnalyzer

        return IdentityAnalyzer()
    if config.name == "maskrcnn":
        from amodal.engine.analyzers.maskrcnn import MaskRCNNAnalyzer

        return MaskRCNNAnalyzer(config)
    if config.name == "ovis":
        from amodal.engine.analyzers.ovis import OvisAnalyzer

        return OvisAnalyzer(config)
    if config.name == "reid":
        from amodal.engine.analyzers.reid import ReidAnalyzer

        return ReidAnalyzer(config)
    raise ConfigError(f"unknown analyzer {config.name!r}; choose from {', '.join(ANALYZER_NAMES)}")
