"""Function tasks (``hpcaf.Executor``): what a submission must say, and whether the image
can read what the client pickled.

The client's Python is compared with the image's (recorded when the image
entered the cache) here, at submission, so that a mismatch is a 400 naming both
versions and the way out, never a worker that dies on bytecode it cannot read.
"""

from __future__ import annotations

from pydantic import ValidationError

from harvester.context import HarvesterContext
from harvester.errors import InvalidRequest
from harvester.images.reference import is_registry_reference
from protocol.pythons import ClientPython, incompatibility
from protocol.tasks import TaskParameters

RESULTS_FILE = "results.pkl"


def check_function_parameters(ctx: HarvesterContext, params: TaskParameters, image: str) -> None:
    """A ``pyfunc`` task: its client Python, its calls file among the inputs, a call range
    per job, the results file among the outputs, and an image that can read the calls."""
    args = params.transformArgs
    try:
        client = ClientPython.model_validate(args.get("python"))
    except ValidationError as exc:
        raise InvalidRequest(
            "a pyfunc task needs transformArgs.python: {version, serializer[, cloudpickle]} "
            f"({exc.errors()[0]['msg']})"
        ) from exc
    calls_file = args.get("calls_file")
    if calls_file not in {item.name for item in params.inputs}:
        raise InvalidRequest("transformArgs.calls_file must name one of the task's inputs")
    if RESULTS_FILE not in params.outputs:
        raise InvalidRequest(f"a pyfunc task must declare the output {RESULTS_FILE}")
    limit = args.get("max_result_bytes")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise InvalidRequest("transformArgs.max_result_bytes must be a positive integer")
    if not params.jobParameters:
        raise InvalidRequest("a pyfunc task needs jobParameters: one {'calls': [first, stop]} each")
    for index, job in enumerate(params.jobParameters):
        span = job.get("calls")
        if (
            not isinstance(span, list)
            or len(span) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in span)
            or not 0 <= span[0] < span[1]
        ):
            raise InvalidRequest(
                f"jobParameters[{index}].calls must be [first, stop) with 0 <= first < stop"
            )
    if is_registry_reference(image):
        return  # not on the site yet: the pulled image is checked by the jobs themselves
    found = ctx.images.get(image)
    if found is not None:
        why = incompatibility(image, found.python, client)
        if why is not None:
            raise InvalidRequest(why)
