"""Media: probing uploads, FFmpeg, filter graphs, effects, encoding, measuring, thumbnails."""
