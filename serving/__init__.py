"""gpulab's model server: TensorFlow Serving's REST and gRPC APIs over SavedModels."""
