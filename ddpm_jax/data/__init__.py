"""Dataset builders used by ``ddpm_jax.input_pipeline``."""
