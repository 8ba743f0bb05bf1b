"""Export of artifacts, the blurring runtime, and the `anonlab` command line."""
