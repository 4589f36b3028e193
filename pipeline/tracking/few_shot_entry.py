"""The logged ``few_shot/`` model's code (MLflow "models from code"): MLflow runs this file when
it loads the model, with the model's ``code/`` folder on the path, so it imports the predictor
by its file name and nothing of the project (:mod:`pipeline.serving.few_shot_predictor`)."""

import mlflow
from few_shot_predictor import FewShotPredictor, InputError
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

#: The artifact that holds the predictor's state folder.
STATE = "state"


class FewShotModel(mlflow.pyfunc.PythonModel):
    """Adapts to each request's support set, predicts its query set."""

    def load_context(self, context):
        self.predictor = FewShotPredictor.load(context.artifacts[STATE])

    def predict(self, context, model_input, params=None):
        try:
            return self.predictor.predict(model_input)
        except InputError as e:  # the scoring server answers 400 with the message
            raise MlflowException(str(e), error_code=INVALID_PARAMETER_VALUE) from None


mlflow.models.set_model(FewShotModel())
