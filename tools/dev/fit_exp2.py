"""Fits the polynomial for 2^f on [-1/2, 1/2] that `fastmath::exp2_nonpositive` uses.

Minimax in relative error by Lawson's iteration (weighted least squares, weights grown where
the error is largest), with the constant term fixed to 1 so 2^0 is exact; prints the
coefficients of f^1 ... f^deg as f32 and the largest relative error of the polynomial
evaluated in f32 by Horner's rule, as the kernel does.

    python tools/dev/fit_exp2.py [DEGREE]    (default 4; needs numpy)
"""

import sys

import numpy as np


def fit(deg: int):
    x = np.linspace(-0.5, 0.5, 20001)
    y = 2.0**x
    powers = np.vstack([x**k for k in range(1, deg + 1)]).T
    w = np.ones_like(x)
    for _ in range(200):
        scale = np.sqrt(w) / y
        c, *_ = np.linalg.lstsq(powers * scale[:, None], (y - 1) * scale, rcond=None)
        err = (1 + powers @ c - y) / y
        w = w * np.abs(err)
        w /= w.sum()
    c32 = [np.float32(v) for v in c]
    xf = x.astype(np.float32)
    p = c32[-1]
    for v in reversed(c32[:-1]):
        p = p * xf + v
    p = p * xf + np.float32(1)
    f32_err = np.abs((p.astype(np.float64) - y) / y).max()
    return c32, np.abs(err).max(), f32_err


if __name__ == "__main__":
    deg = int(sys.argv[1]) if len(sys.argv) > 1 else 4
    coeffs, err, f32_err = fit(deg)
    print(f"degree {deg}: relative error {err:.3g}, evaluated in f32 {f32_err:.3g}")
    for k, c in enumerate(coeffs, start=1):
        print(f"  f^{k}: {float(c)!r}")
