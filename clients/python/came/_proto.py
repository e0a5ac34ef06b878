"""Imports the generated came.v1 stubs (rank_pb2, rank_pb2_grpc, common_pb2).

See came/v1/__init__.py for where they come from.
"""

try:
    from came.v1 import common_pb2, rank_pb2, rank_pb2_grpc  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the build
    raise ImportError(
        "came: the generated gRPC stubs (came.v1.rank_pb2) were not found (%s). Install the "
        "package (pip install ./clients/python), or build them in the checkout with "
        "`cmake -S . -B build -G Ninja && ninja -C build came_python_stubs`, or put "
        "<build>/python on PYTHONPATH." % e) from None
