"""Models (torchvision Mask R-CNN + FPN, Keypoint R-CNN), datasets, the training loop."""
