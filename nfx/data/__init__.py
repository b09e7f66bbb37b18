"""Data: discovery, decoding (DICOM and ordinary images), splits, cache, fastai DataLoaders."""
