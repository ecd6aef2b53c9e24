"""gpulab notebook-side extensions (server extension and JupyterLab frontend)."""
