"""The pipeline's stages, in order: generate -> meta_train -> meta_test."""
