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


class Preempted(SystemExit):
    """The job is stopping (came-launch got SIGTERM, e.g. a preempted cluster job): the
    runtime saved a checkpoint after step `step` and refuses further steps.

    Raised by ShardedCAME.step() instead of running the step. It is a SystemExit with
    status 0, so a training script that does not catch it exits cleanly (finally blocks and
    `with` blocks still run); catch it (`except came.Preempted`) to do something first. A new
    job resumes from the checkpoint with ShardedCAME(..., resume=True).
    """

    def __init__(self, step):
        super().__init__(0)
        self.step = step

    def __str__(self):
        return "preempted: the job stopped after step %d, whose checkpoint is saved" % self.step
