"""Label Studio: labeling config from the taxonomy, push, pull, format conversion."""
