"""The validated ``settings.AIO_REQUEST`` of this process, read once and again after it changes.

The middleware reads it on every request (``current.settings``: an attribute look-up once read),
the clients registry when it builds a client, the database bound and the breaker publisher when
they need a value. Invalid settings raise ``ImproperlyConfigured`` listing every error; the system
checks (``checks.py``) read the same setting through the same reader and report instead.
"""

import difflib
import os
import sys
import threading
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar, overload

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.dispatch import receiver

from django_aio_request.conf.reader import UNEXPECTED
from django_aio_request.conf.schema import SETTING, AioRequestSettings, Problem, read_settings
from django_aio_request.core.client_setup import error_text


class InvalidSettings(ImproperlyConfigured):
    """``settings.AIO_REQUEST`` has errors; the message lists every one."""


def _read(value: Any) -> tuple[AioRequestSettings | None, list[Problem]]:
    """``read_settings(value)``; whatever it raises that it did not foresee (a bug of the reader) is
    an ``InvalidSettings`` naming it, with the id ``check`` reports it under (E099), not a plain
    ValueError or AttributeError at the first use of a client."""
    try:
        return read_settings(value)
    except Exception as error:
        raise InvalidSettings(
            f"{SETTING} could not be read: {type(error).__name__}: {error_text(error)}"
            f" [django_aio_request.{UNEXPECTED}]"
            "\n(a bug of django-aio-request: please report it with the setting's value)"
        ) from error


T = TypeVar("T")


class _ReadOnce(Generic[T]):
    """``functools.cached_property`` without its lock: the value is kept in the instance's ``__dict__``,
    so a read is a plain attribute look-up (the middleware reads the settings on every request).

    Python 3.11's ``cached_property`` holds one lock for the whole computation, and reading the
    settings imports the modules their dotted paths name. A thread reading them while another
    thread imported one of those modules, which looked a client up as it was imported
    (``AUTH = clients["auth"]``), waited for that import, which waited for the lock: both hung for
    good, and every later first use of a client with them. Here two threads may both read the
    settings, as two imports would; the first value kept is the one every later read gets. A read
    that :meth:`CurrentSettings.reset` overtook keeps nothing (the setting changed meanwhile).
    """

    def __init__(self, read: Callable[[Any], T]) -> None:
        self._read = read
        self._name = read.__name__
        self.__doc__ = read.__doc__

    @overload
    def __get__(self, instance: None, owner: type | None = None) -> "_ReadOnce[T]": ...
    @overload
    def __get__(self, instance: "CurrentSettings", owner: type | None = None) -> T: ...
    def __get__(self, instance: "CurrentSettings | None", owner: type | None = None) -> "T | _ReadOnce[T]":
        if instance is None:
            return self
        generation = instance._generation
        value = self._read(instance)
        # Not kept either: settings read while a module they name was half imported (reader.Deferred);
        # the next read, once it is imported, checks what they name.
        if not getattr(value, "provisional", False):
            # The look at the generation and the store in one step, as reset() bumps and drops: a
            # reset() between them dropped nothing yet stored, and the old settings stayed for good
            # (a review). Taken only by a read that found nothing kept.
            with instance._storing:
                if instance._generation == generation:
                    value = instance.__dict__.setdefault(self._name, value)
        return value


class CurrentSettings:
    _generation = 0  # how many times reset() ran: a read it overtook is not kept

    # Kept in the instance's __dict__, so a read is a plain attribute look-up; reset() drops it.
    @_ReadOnce
    def settings(self) -> AioRequestSettings:
        parsed, problems = _read(getattr(settings, SETTING, {}))
        if parsed is None:
            errors = [str(p) for p in problems if not p.warning]
            noun = "problem" if len(errors) == 1 else "problems"
            listed = "\n  ".join(errors)
            raise InvalidSettings(f"{SETTING} has {len(errors)} {noun}:\n  {listed}\n{_where_checked()}")
        return parsed

    @_ReadOnce
    def database_statement_timeout(self) -> bool:
        """``DATABASE_STATEMENT_TIMEOUT``, which the database bound reads on every query.

        This key is read on its own, not with the rest of ``AIO_REQUEST``:

        * when the rest has errors (a client's ``ENDPOINT``), in a process that runs no checks
          (``manage.py shell``, a task worker), an HTTP client's mistake raises where that client is
          used, and must not fail every database query;
        * reading the rest imports the modules it names, and while one of them is half imported (it
          looks a client up as it is imported) those settings are not kept, so each read imports it
          again: the breaker publisher's first read, on its thread, waited for that import, which
          waited for the read, and every build waited the whole first-read wait on a healthy
          PostgreSQL and called endpoints admin had forced open.

        An invalid value of this key, or an ``AIO_REQUEST`` that is no mapping, raises
        ``InvalidSettings`` listing every problem of the setting. Any mapping (a
        ``types.MappingProxyType`` too) is read, as the settings reader accepts them.
        """
        raw = getattr(settings, SETTING, {})
        if not isinstance(raw, Mapping):
            return self.settings.database_statement_timeout  # raises, saying what it is
        key = "DATABASE_STATEMENT_TIMEOUT"
        alone, _ = _read({key: raw[key]} if key in raw else {})
        if alone is None:
            return self.settings.database_statement_timeout  # raises, listing every problem
        return alone.database_statement_timeout

    def __init__(self) -> None:
        self._renew_lock()

    def _renew_lock(self) -> None:
        self._storing = threading.Lock()  # a kept read's store, against reset()

    def reset(self) -> None:
        with self._storing:
            self._generation += 1
            self.__dict__.pop("settings", None)
            self.__dict__.pop("database_statement_timeout", None)


current = CurrentSettings()
# A lock another thread held at a fork would stay held in the child, and its every first read hang.
os.register_at_fork(after_in_child=current._renew_lock)


@receiver(setting_changed)
def _reset(*, setting: str, **kwargs: Any) -> None:
    # CACHES too: CIRCUIT_BREAKER_STATE is valid only while it names one of them.
    if setting in (SETTING, "CACHES"):
        current.reset()


def _where_checked() -> str:
    """Where else the problems are reported: by `manage.py check`, if the app is installed (its checks
    are registered by its AppConfig); it said so without the app too, where check passed them all."""
    from django.apps import apps

    if apps.loading and not apps.ready:  # (loading stays True once populate() has begun)
        # A module looked a client up as Django imported the apps (a models module, an app's ready()):
        # populate() raises this, and no command starts, check included (a review: the message sent
        # the reader to the command that had just failed with it).
        return (
            "(raised while Django loads its apps, by a client looked up as they load: no manage.py command"
            " can start, `check` included, until these are fixed)"
        )
    if apps.ready and not apps.is_installed("django_aio_request"):
        return "(add 'django_aio_request' to INSTALLED_APPS for `manage.py check` to report them, with warnings)"
    if _running_checks():
        # A URLconf whose views look a client up as they are imported, imported by Django's URL check:
        # the message sent the reader to `manage.py check`, the command that had just failed (a review).
        return (
            "(raised while Django's system checks ran, by a client looked up as a module they import was"
            " imported, a URLconf's views say: `manage.py check --tag django_aio_request` lists them)"
        )
    return "(`manage.py check` reports the same, with warnings)"


def _running_checks() -> bool:
    """Whether Django's system checks are running in this thread (``run_checks`` is on the stack)."""
    frame = sys._getframe(1)
    while frame is not None:
        code = frame.f_code
        if code.co_name == "run_checks" and code.co_filename.endswith(os.path.join("core", "checks", "registry.py")):
            return True
        frame = frame.f_back  # type: ignore[assignment]
    return False


def misspelt_setting() -> str | None:
    """The name of a setting spelt like ``AIO_REQUEST`` (``AIO_REQUESTS``, ``AIO_REQEUST``, and the
    package's name, ``DJANGO_AIO_REQUEST``) when ``AIO_REQUEST`` itself is not set, or None. Names with
    AIO in them only (``API_REQUESTS`` is no suggestion), and close ones: at the 0.7 used before, a
    project's own ``AIO_REQUEST_DEBUG`` or ``MY_AIO_REQUEST_FLAG`` was named as a misspelling (a review)."""
    if hasattr(settings, SETTING):
        return None
    spelt_like = [name for name in dir(settings) if name.isupper() and "AIO" in name]
    near = difflib.get_close_matches(SETTING, spelt_like, n=1, cutoff=0.85)
    if near:
        return near[0]
    named_after_the_package = [name for name in spelt_like if name in _PACKAGE_NAMED]
    return named_after_the_package[0] if named_after_the_package else None


_PACKAGE_NAMED = ("DJANGO_AIO_REQUEST", "DJANGO_AIO_REQUESTS")
