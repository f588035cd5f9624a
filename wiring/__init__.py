"""The wiring: the composition root and the command line, above `web` and `actors`."""
