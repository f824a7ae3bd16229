"""The bottom of the package graph: what both sides and the `talaria` command need at start-up.

`flags` turns a settings model into command-line flags. This package imports no other Talaria
package, so `talaria_proxy` and `cloud_backend` can use it without depending on `talaria_cli`.
"""
