"""One operator per release stage. Each is thin: it calls ``model_delivery.release``."""

from model_delivery.operators.approve import ApproveReleaseOperator
from model_delivery.operators.build import BuildModelOperator
from model_delivery.operators.deploy import DeployModelOperator
from model_delivery.operators.evaluate import EvaluateModelOperator
from model_delivery.operators.gate import GateModelOperator
from model_delivery.operators.promote import PromoteModelOperator
from model_delivery.operators.record import RecordReleaseOperator
from model_delivery.operators.resolve import ResolveRollbackOperator
from model_delivery.operators.retire import RetireModelOperator
from model_delivery.operators.rollback import RollbackModelOperator
from model_delivery.operators.smoke import SmokeTestModelOperator
from model_delivery.operators.validate import ValidateDataOperator

__all__ = [
    "ApproveReleaseOperator",
    "BuildModelOperator",
    "DeployModelOperator",
    "EvaluateModelOperator",
    "GateModelOperator",
    "PromoteModelOperator",
    "RecordReleaseOperator",
    "ResolveRollbackOperator",
    "RetireModelOperator",
    "RollbackModelOperator",
    "SmokeTestModelOperator",
    "ValidateDataOperator",
]
