"""Errors raised by came."""

import grpc


class CameError(RuntimeError):
    """A call to the rank service failed.

    Attributes:
      code: the grpc.StatusCode (e.g. grpc.StatusCode.UNAUTHENTICATED).
      code_name: its name ("UNAUTHENTICATED").
      details: the server's message.
      method: the RPC that failed ("Step").
    """

    def __init__(self, method, code, details):
        self.method = method
        self.code = code
        self.code_name = code.name if isinstance(code, grpc.StatusCode) else str(code)
        self.details = details or ""
        super().__init__("Rank.%s failed: %s: %s" % (method, self.code_name, self.details))


class InvalidArgumentError(CameError, ValueError):
    """rankd refused a value (INVALID_ARGUMENT), e.g. a hyperparameter: the details say
    which and why, with the rule every entry point shares (kernels/hyper_check.h)."""
