"""Errors that reach the user as one line: every nlpress failure derives from NlpressError."""


class NlpressError(Exception):
    """A failure that the command line reports as one line and exit code 1."""


class UsageError(NlpressError):
    """A wrong option, pass name or argument: exit code 2."""


class ModelLoadError(NlpressError):
    """A file that is missing, truncated or not a valid ONNX model."""


class VerificationError(NlpressError):
    """A model that fails the checker or differs numerically from its reference."""


class BudgetNotMet(NlpressError):
    """A pass's accuracy budget was not met: exit code 3.

    Attributes:
        pass_name: The pass whose budget it was.
        option: The budget's option, e.g. "budget-cosine".
        budget: The value asked for.
        reached: The value the pass reached.
        result: What the pipeline made anyway (a PipelineResult), for callers who inspect it.
    """

    def __init__(
        self, pass_name: str, option: str, budget: float, reached: float, result: object = None
    ) -> None:
        super().__init__(f"{pass_name}: {option}={budget} asked, {reached:.8g} reached")
        self.pass_name = pass_name
        self.option = option
        self.budget = budget
        self.reached = reached
        self.result = result
