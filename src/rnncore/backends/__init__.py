"""The backends: what computes a layer's directions over a sequence. The registry picks
one; the contract says what each provides and holds what they share; reference/ is the
NumPy oracle, cython/ and numba/ the fast paths. Imports nothing of rnncore above it."""
