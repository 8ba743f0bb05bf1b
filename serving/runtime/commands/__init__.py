"""The runtime's commands, `blur` and `serve`: options and handlers that need nothing of the
platform, run by `python -m serving.runtime` and registered as they are by `anonlab`."""
