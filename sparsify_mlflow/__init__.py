"""sparsify-mlflow: training-aware sparsification experiments tracked in MLflow."""
