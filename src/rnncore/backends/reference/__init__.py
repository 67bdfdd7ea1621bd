"""The NumPy reference, the oracle every other backend is tested against (backend "numpy")."""
