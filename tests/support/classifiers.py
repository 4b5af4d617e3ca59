"""Response classifiers that settings name by dotted path in the tests of the settings check."""

from django_aio_request import Response, ResponseVerdict
from django_aio_request.core.classifier import ResponseClassifier


class NeedsArguments(ResponseClassifier):
    """The client builds its classifier with ``cls()``: this one cannot be."""

    def __init__(self, retried: set[int]) -> None:
        self.retried = retried

    def classify(self, response: Response) -> ResponseVerdict:
        return ResponseVerdict.REJECT if response.status in self.retried else ResponseVerdict.ACCEPT
