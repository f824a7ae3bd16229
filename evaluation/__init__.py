"""Privacy audit of the Talaria split (arXiv 2603.00196): attacks on what the cloud records.

`talaria eval privacy` drives prompts through the real proxy and cloud, then runs model-aware
attacks (nearest neighbour, subspace projection, token-by-token matching as in "Hidden No More",
arXiv 2505.18332, PCA subspace estimation, learned inverters) on the recorded transcript only.
Submodules are imported lazily by the CLI; this package re-exports nothing heavy.
"""
