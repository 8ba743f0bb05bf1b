"""The blurring runtime: tiled detection and blurring, with no training or torch dependency."""
