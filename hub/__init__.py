"""gpulab hub side: settings, GPU ledger, REST API, CLI."""
