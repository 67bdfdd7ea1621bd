"""Arrays and layer objects: the cell vocabulary (spec), the module base (module), the
checks at the edge (validate), the one door to the backends (functional), and the layers
and cells built on it. Imports the backends only, and them only through functional."""
