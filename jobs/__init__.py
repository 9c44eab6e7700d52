"""Front doors: submit, run, query, spend; the CLI; the demo and its loopback model server."""
