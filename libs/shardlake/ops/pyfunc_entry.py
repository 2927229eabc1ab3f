"""MLflow models-from-code entry: MLflow stores this file with each logged model and runs it on load."""
from mlflow.models import set_model

from shardlake.ops.pyfunc import ShardlakeModel

set_model(ShardlakeModel())
