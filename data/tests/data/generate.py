"""Regenerates the NumPy fixtures read by the tests in data/src/npy/tests.rs.

Run from this directory with NumPy installed:  python3 generate.py
The tests recompute every value from the formulas below, so keep them in sync.
"""
import numpy as np

# .npy files
np.save("numpy_f32.npy", (np.arange(24, dtype="<f4") * 0.5 - 3.0).reshape(2, 3, 4))
np.save("numpy_f64.npy", (np.arange(12, dtype="<f8") / 7.0).reshape(3, 4))
np.save("numpy_big_endian_f4.npy", (np.arange(6, dtype=">f4") + 0.25).reshape(2, 3))
np.save("numpy_big_endian_f8.npy", (np.arange(6, dtype=">f8") * 1.5 - 2.0).reshape(3, 2))
np.save("numpy_fortran_f4.npy", np.asfortranarray(np.arange(24, dtype="<f4").reshape(2, 3, 4)))
np.save("numpy_fortran_f8_be.npy", np.asfortranarray((np.arange(6, dtype=">f8") / 3.0).reshape(2, 3)))
np.save("numpy_scalar_f4.npy", np.array(3.5, dtype="<f4"))
np.save("numpy_empty_f4.npy", np.zeros((0, 3, 2), dtype="<f4"))
np.save("numpy_i8.npy", np.arange(3, dtype="<i8"))
with open("numpy_v2_f4.npy", "wb") as f:
    np.lib.format.write_array(f, np.arange(5, dtype="<f4"), version=(2, 0))
with open("numpy_v3_f8.npy", "wb") as f:
    np.lib.format.write_array(f, np.arange(5, dtype="<f8"), version=(3, 0))

# .npz archives
x = (np.arange(24, dtype="<f4") * 0.5 - 3.0).reshape(2, 3, 4)
y = (np.arange(12, dtype="<f8") / 7.0).reshape(3, 4)
np.savez("numpy_savez.npz", x=x, y=y, cond=np.array([1.0, -2.0, 0.5], dtype="<f4"))
np.savez_compressed(
    "numpy_savez_compressed.npz",
    x=x,
    y=y,
    x_val=np.asfortranarray(np.arange(24, dtype="<f4").reshape(2, 3, 4)),
    y_val=(np.arange(6, dtype=">f8") * 1.5 - 2.0).reshape(3, 2),
    cond=np.zeros((0, 2), dtype="<f4"),
    scalar=np.array(3.5, dtype="<f4"),
)
