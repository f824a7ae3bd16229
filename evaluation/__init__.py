"""Privacy audit of the Talaria split (arXiv 2603.00196): attacks on what the clouds record.

`talaria eval privacy` drives prompts through the real proxy and recording clouds, then runs
model-aware attacks (nearest neighbour, subspace projection, token-by-token matching as in "Hidden
No More", arXiv 2505.18332, PCA subspace estimation, learned inverters) on the recorded transcripts
only: for `none` and ReMO the one cloud's, for `pad` each party's (compute cloud, pad dealer, both
colluding; or the one `he` cloud with its ciphertexts), plus uniformity tests of what a pad cloud
receives. Submodules are imported lazily by the CLI; this package re-exports nothing heavy.
"""
