"""sftbeam's pipeline side: options, config, graph assembly, CLI, readers."""

import os

# transformers warns at import that PyTorch is absent; sftbeam needs only
# tokenizers, so the warning is noise for users.
os.environ.setdefault('TRANSFORMERS_NO_ADVISORY_WARNINGS', '1')
# TensorFlow's C++ start-up chatter (CPU features, absl) likewise.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
