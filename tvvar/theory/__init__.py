"""The paper's quantities, by section: information (III), estimation (II, V-F, V-G), space (IV), transformer (V)."""
