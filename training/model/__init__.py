"""The model the service runs: backbone wrappers (open_clip, Hugging Face), the matcher, model bundles, image
decoding with its safety limits, explanations and the default model's name.

Kept apart from training proper (losses, mining, the loops, evaluation), as open_clip keeps `open_clip` apart
from `open_clip_train`: serving needs only this subpackage, and it imports nothing from the rest of
`training` (tests/test_layout.py checks it).
"""
