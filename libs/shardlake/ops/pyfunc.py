"""A shardlake model as an MLflow pyfunc model: ``mlflow.pyfunc.load_model(uri).predict(pandas_frame)``.

``predict`` scores with the map stage's own code (``scoring.arrow_features`` and ``score_frame`` on
Arrow record batches of at most ``BATCH_ROWS`` rows, the decision threshold inference uses), so a
pyfunc prediction of a row is the prediction inference writes for it. The model's spec (feature
statistics, vocabulary) and weights are the model's artifacts; ``shardlake`` must be importable
where the model is loaded (it is the code, not a copy of it).
"""
from __future__ import annotations

import json
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd

SPEC_ARTIFACT = "spec"
WEIGHTS_ARTIFACT = "weights"
BATCH_ROWS = 8192  # infer.batch_size's default: the map stage's slices


class ShardlakeModel(mlflow.pyfunc.PythonModel):
    """Scores a pandas frame holding the model's feature columns; returns prediction and score per row."""

    def load_context(self, context) -> None:
        from shardlake.models.tabular import ModelSpec
        from shardlake.scoring import build_scoring_model

        self.spec = ModelSpec.from_dict(json.loads(Path(context.artifacts[SPEC_ARTIFACT]).read_text()))
        self.model, self.device = build_scoring_model(self.spec,
                                                      Path(context.artifacts[WEIGHTS_ARTIFACT]).read_bytes())

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        """(prediction, score) columns for ``model_input``'s rows, in its order and index."""
        import pyarrow as pa

        from shardlake.scoring import PREDICTION, SCORE, arrow_features, even_slices, score_frame
        from shardlake.stages.infer import THRESHOLD

        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        features = list(dict.fromkeys([*self.spec.numeric, *self.spec.categorical]))
        missing = [c for c in features if c not in frame.columns]
        if missing:
            raise ValueError(f"cannot score: input lacks feature column(s) {missing}")
        batch = pa.RecordBatch.from_pandas(frame[features], preserve_index=False)
        predictions, scores = [np.empty(0, np.int32 if self.spec.kind == "binary" else np.float64)], [np.empty(0)]
        for offset, length in even_slices(batch.num_rows, BATCH_ROWS):
            features = arrow_features(batch.slice(offset, length), self.spec)
            prediction, score = score_frame(self.model, self.spec, features, self.device, THRESHOLD)
            predictions.append(prediction)
            scores.append(score)
        return pd.DataFrame({PREDICTION: np.concatenate(predictions), SCORE: np.concatenate(scores)},
                            index=frame.index)
