"""Regenerate compiler/poetc/data/digits.npz from scikit-learn's bundled copy of the UCI digits.

Run once by a maintainer (scikit-learn is not a dependency of poetc):
    python scripts/make_digits_data.py
The file stamps the versions used. Source: UCI ML hand-written digits (E. Alpaydin, C. Kaynak, 1998),
8x8 images with integer pixels 0..16, 1797 samples, CC BY 4.0.
"""

from pathlib import Path

import numpy as np
import sklearn
import sklearn.datasets

out = Path(__file__).resolve().parents[1] / "compiler" / "poetc" / "data" / "digits.npz"
d = sklearn.datasets.load_digits()
np.savez_compressed(
    out,
    x=d.data.astype(np.uint8).reshape(-1, 8, 8),
    y=d.target.astype(np.uint8),
    provenance=np.array(
        f"UCI optical recognition of handwritten digits (test set), via scikit-learn {sklearn.__version__}, "
        f"numpy {np.__version__}; pixels 0..16; CC BY 4.0"
    ),
)
print(out, out.stat().st_size, "bytes")
