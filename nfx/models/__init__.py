"""Models: timm model creation, pretrained weights (hub or local file), head/body split."""
