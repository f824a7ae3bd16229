"""The `talaria` command line: tiny-model, cloud, proxy, up, eval, bench."""
