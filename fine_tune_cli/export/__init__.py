"""Export formats (one registry) and the parity gate every export must pass.

The format names live here, without importing torch, so `ftc export --help` and shell
completion list them instantly; a test keeps them equal to the registry's keys."""

FORMATS = ("hf", "onnx", "pt2", "int8", "pruned")
# Old names still accepted by `ftc export --format`, with a warning: name -> what it writes.
DEPRECATED_FORMATS = {"torchscript": "pt2"}
