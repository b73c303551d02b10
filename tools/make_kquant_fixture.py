"""Writes tests/data/kquant_gguf_py.json: random Q4_K / Q6_K / Q4_0 / Q4_1 / Q8_0
blocks and their dequantization by the `gguf` Python package (llama.cpp's gguf-py),
used as an independent cross-check of src/gguf/quant.rs.

Usage: python make_kquant_fixture.py   (needs `pip install gguf==0.19.0`)
"""
import json, pathlib
import numpy as np
from gguf import GGMLQuantizationType as Q, quants

rng = np.random.default_rng(1234)
out = {"generator": "gguf-py " + __import__("importlib.metadata").metadata.version("gguf"), "cases": []}
# (type, block bytes, offsets of f16 scale fields)
specs = [(Q.Q4_K, 144, [0, 2]), (Q.Q6_K, 210, [208]), (Q.Q4_0, 18, [0]), (Q.Q4_1, 20, [0, 2]), (Q.Q8_0, 34, [0])]
for qt, bb, f16_offsets in specs:
    n_blocks = 3
    raw = bytearray(rng.integers(0, 256, size=n_blocks * bb, dtype=np.uint8).tobytes())
    for b in range(n_blocks):
        for off in f16_offsets:
            v = np.float16(rng.uniform(-0.1, 0.1))
            raw[b * bb + off: b * bb + off + 2] = v.tobytes()
    arr = np.frombuffer(bytes(raw), dtype=np.uint8).reshape(1, -1)
    deq = quants.dequantize(arr, qt).reshape(-1).astype(np.float32)
    out["cases"].append({"type": qt.name, "hex": bytes(raw).hex(), "values": [float(x) for x in deq]})
path = pathlib.Path(__file__).resolve().parent.parent / "tests" / "data" / "kquant_gguf_py.json"
path.write_text(json.dumps(out))
print("wrote", path, path.stat().st_size, "bytes")
