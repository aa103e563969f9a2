"""One module per `pocketml` command: options and output only; the work lives in convert/, profiler/, runtime/."""
