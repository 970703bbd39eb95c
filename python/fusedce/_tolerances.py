"""What "matches the float64 reference" means, per dtype: shared by the tests
(tests/tolerances.py, which documents the rules) and `fusedce bench`'s correctness check.

Loss and lse: |got - ref| <= LOSS_RTOL * max(|ref|, 1). Gradient: max |got - ref| <=
GRAD_RTOL * max |ref| (half-precision gradients are rounded once: the format's half-ulp).
"""

LOSS_RTOL = {"float32": 2e-6, "float64": 1e-12, "float16": 2e-6, "bfloat16": 2e-6}
GRAD_RTOL = {"float32": 2e-6, "float64": 1e-12, "float16": 1e-3, "bfloat16": 8e-3}
