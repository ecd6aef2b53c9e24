"""gpulab REST API handlers, mounted under /hub/api/gpulab/."""
