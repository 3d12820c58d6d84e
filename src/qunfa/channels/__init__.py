"""Channel adapters: one module per channel key, all speaking the contract in ``base``."""
