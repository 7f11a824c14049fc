"""sftbeam's pipeline side: options, config, graph assembly, CLI, readers."""
