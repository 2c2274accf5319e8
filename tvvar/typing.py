"""Notation shared by every module (the letters appear in array names and einsum strings).

| letter | meaning                                   | paper                          |
|--------|-------------------------------------------|--------------------------------|
| B      | batch                                     |                                |
| T      | time / sequence length                    | t                              |
| D      | model width (token-vector dimension)      | dimension of u_t (Def. 11)     |
| V      | vocabulary size                           | N (size of the token set)      |
| H      | attention heads                           | heads of Theorem 5             |
| K      | head (key/query) dimension                |                                |
| N      | SSM state size                            | dimension of the state (Eq. 78)|

Index convention (DESIGN.md): position i holds token x_i and its vector u_i; row i of every mixer
output and coefficient tensor predicts token i+1.  Code ``A[i, j]`` is the paper's ``A_{t,j'}`` with
t = i + 2 and j' = j + 1.
"""

from __future__ import annotations

from typing import Literal

import jax

Array = jax.Array
PRNGKey = jax.Array
DType = jax.typing.DTypeLike

MaskKind = Literal["causal", "bidirectional"]
MASK_KINDS: tuple[str, ...] = ("causal", "bidirectional")
