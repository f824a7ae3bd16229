"""Cloud side of Talaria: owns the weights and answers masked linear calls.

It sees only what the CVM sends (masked inputs x~ of each linear op) and never imports
`talaria_proxy`; the wire protocol in `talaria_wire` is the only code the two sides share.
"""
