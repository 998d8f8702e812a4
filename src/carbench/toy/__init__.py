"""The toy world: procedural scenes (`scenes`), the tiny CLIP trained on them (`model`) and its
training script (`python -m carbench.toy.train`)."""
