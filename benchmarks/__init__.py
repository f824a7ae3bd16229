"""Runnable measurements of Talaria (not unit tests): `talaria bench [speed|precision] [--quick]`.

    speed      plain HF transformers `generate` vs Talaria over HTTP (1 and 8 streams through the
               OpenAI endpoint), plus an in-process profile that splits a step into transport,
               cloud GEMM, CVM masking and other CVM work -> results/bench/
    precision  relative error of ReMO recovery per mask scale x GEMM dtype, and whether greedy
               decoding stays identical to the unmasked float32 model -> results/precision/

Each writes a Markdown table, a JSON file and a PNG plot, and prints the table.
"""
