"""One module per CLI command (or command group); each keeps heavy imports inside functions."""
