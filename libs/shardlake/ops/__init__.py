"""Operating the platform: experiment tracking and the model registry (MLflow), and other operator-facing channels."""
