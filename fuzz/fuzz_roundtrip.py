"""Fuzz encode -> decode: fuzzer-built tensors through every plan, with plain or
grouped codebook indices, decode exactly to the encoder's reconstruction
(lossless plans: to the input)."""

import atheris
import numpy as np

with atheris.instrument_imports():
    import dcfmt
    from common import run

_DTYPES = [np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32,
           np.uint64, np.float16, np.float32, np.float64]
_PLANS = ["lossless", "error-bounded", "paper", dcfmt.FixedPlan(bits=3, sparsity=0.5)]


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    dtype = np.dtype(_DTYPES[fdp.ConsumeIntInRange(0, len(_DTYPES) - 1)])
    rank = fdp.ConsumeIntInRange(0, 3)
    shape = tuple(fdp.ConsumeIntInRange(0, 9) for _ in range(rank))
    n = int(np.prod(shape)) if shape else 1
    raw = fdp.ConsumeBytes(n * dtype.itemsize).ljust(n * dtype.itemsize, b"\0")
    array = np.frombuffer(raw, dtype=dtype).reshape(shape).copy()
    if dtype == np.bool_:
        array = array.view(np.uint8) % 2 == 1
    plan = _PLANS[fdp.ConsumeIntInRange(0, len(_PLANS) - 1)]
    # the writer's choices, or indices forced into groups (format 1.1) in short chunks
    group = fdp.ConsumeIntInRange(0, 8)
    options = dcfmt.EncodeOptions(chunk_log=4, index_group=group) if group >= 2 \
        else dcfmt.EncodeOptions()
    try:
        blob = dcfmt.encode({"t": array}, plan=plan, options=options)
    except dcfmt.EncodeError:
        return
    out = dcfmt.decode(blob)["t"]
    codes = []
    with dcfmt.Writer(__import__("io").BytesIO(), plan=plan) as w:
        codes.append(w.write("t", array))
    want = codes[0].reconstruct()
    if out.shape != want.shape or out.tobytes() != want.tobytes():
        raise AssertionError("decode differs from the encoder's reconstruction")
    if plan == "lossless" and out.tobytes() != array.tobytes():
        raise AssertionError("lossless plan lost information")


if __name__ == "__main__":
    run(test_one_input)
