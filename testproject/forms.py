"""The demo pages' forms: what the browser asks of the frontend, validated."""

from django import forms

from django_aio_request import Deadline, Priority
from testproject.chain import FORWARDED

PRIORITIES = [("", "pass on what was received"), *((p.value, p.value) for p in Priority)]


class ChainForm(forms.Form):
    """The deadline and priority the frontend's chain page calls with, the seconds each hop works
    before calling on, and what billing should do."""

    deadline = forms.FloatField(required=False, min_value=0.0, max_value=30.0, help_text="seconds")
    priority = forms.ChoiceField(required=False, choices=PRIORITIES)
    work = forms.FloatField(required=False, min_value=0.0, max_value=5.0)
    delay = forms.FloatField(required=False, min_value=0.0, max_value=10.0)
    fail = forms.FloatField(required=False, min_value=0.0, max_value=1.0)
    slow = forms.FloatField(required=False, min_value=0.0, max_value=1.0)
    slow_delay = forms.FloatField(required=False, min_value=0.0, max_value=10.0)

    INITIAL = {"deadline": "2", "priority": "normal", "work": "0.01"}

    def context_arguments(self) -> dict[str, object]:
        """``set_context`` arguments for what the form names (a blank field passes on what was received)."""
        arguments: dict[str, object] = {}
        if self.cleaned_data.get("deadline") is not None:
            arguments["deadline"] = Deadline.from_timeout(self.cleaned_data["deadline"])
        if self.cleaned_data.get("priority"):
            arguments["priority"] = Priority(self.cleaned_data["priority"])
        return arguments

    def forwarded(self) -> dict[str, str]:
        """The chain's query parameters the form gives a value."""
        return {key: str(self.cleaned_data[key]) for key in FORWARDED if self.cleaned_data.get(key) is not None}


class ClientsForm(forms.Form):
    """What billing should do on the Clients page's calls, and the priority they are made with: a value
    out of range or not a number is an error shown by its field ("50%" read as 0 and "60" s of delay as
    10 before, without a word)."""

    delay = forms.FloatField(required=False, min_value=0.0, max_value=10.0)
    fail = forms.FloatField(required=False, min_value=0.0, max_value=1.0)
    slow = forms.FloatField(required=False, min_value=0.0, max_value=1.0)
    slow_delay = forms.FloatField(required=False, min_value=0.0, max_value=10.0)
    priority = forms.ChoiceField(required=False, choices=[(p.value, p.value) for p in Priority])

    BILLING = ("delay", "fail", "slow", "slow_delay")

    def billing_parameters(self) -> dict[str, str]:
        """The query parameters of billing's simulated service the form gives a value."""
        return {key: str(self.cleaned_data[key]) for key in self.BILLING if self.cleaned_data.get(key) is not None}

    def call_priority(self) -> Priority:
        return Priority(self.cleaned_data.get("priority") or Priority.NORMAL.value)


class HedgingForm(forms.Form):
    calls = forms.IntegerField(required=False, min_value=10, max_value=1000, initial=300)
