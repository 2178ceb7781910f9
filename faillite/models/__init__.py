"""The model layer: ONNX builders, the torch-free legacy weight reader, preprocessing, labels.

- ``build``: build the catalog's buildable variants into a models dir.
- ``efficientnet_lite``: EfficientNet-Lite0/1/2 ImageNet classifiers from pretrained weights.
- ``synthetic``: ResNet-shaped graphs with seeded random weights.
- ``torch_legacy``: read legacy (non-zip) PyTorch ``.pth`` state dicts without torch.
- ``preprocess``: frame to input tensor and logits to top-k, on the worker's hot path.
- ``labels``: ImageNet-1k class names.
"""
