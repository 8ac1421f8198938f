"""Test helpers shared by stream and engine tests: media makers, a loopback RTSP server, a collecting sink."""
