"""The live view: a page with every stream's state, latency and annotated video, and a REST API to add and remove
sources (``amodal run --http``, ``amodal view``).  See ``sink.LiveView`` and ``app``."""
from amodal.engine.web.settings import WebSettings, web_settings
from amodal.engine.web.sink import LiveView

__all__ = ["LiveView", "WebSettings", "web_settings"]
