"""CVM side of Talaria: the only code that sees plaintext (prompts, tokens, hidden states, KV cache).

It holds no weight matrix of the transformer blocks: every weight-dependent linear op goes to the
cloud through `MaskedLinearClient`, masked by a pluggable `MaskScheme`.
"""
