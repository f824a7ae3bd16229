"""The bottom of the package graph: what both sides and the `talaria` command need at start-up.

- `config`: settings loading (defaults < YAML < environment < flags) with one-line errors;
- `flags`: command-line flags derived from a settings model;
- `processes`: `talaria <command>` child processes for `talaria up`, tests, benchmarks, evaluation.

It imports no other Talaria package, so `talaria_proxy` and `cloud_backend` use it without
depending on `talaria_cli`, which holds only the `talaria` command and sits above both sides.
"""
