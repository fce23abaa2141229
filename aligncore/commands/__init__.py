"""The core's command-line commands, one module-level click command per module (registered by ``aligncore.cli``)."""
