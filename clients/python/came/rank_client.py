"""A thin client of the came.v1.Rank service: token, deadline and error translation.

Every call carries ("authorization", "Bearer <token>") and a deadline; a failed call raises
CameError with the gRPC code and the server's message (InvalidArgumentError, also a
ValueError, for INVALID_ARGUMENT: rankd refused a value, e.g. a hyperparameter). Requests and responses are the
generated proto messages (came._proto.rank_pb2).
"""

import grpc

from ._proto import rank_pb2, rank_pb2_grpc
from .errors import CameError, InvalidArgumentError

# rank.proto: kMaxMessageBytes (a manifest of many tensors can be large).
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class RankClient:
    """Calls one rankd. Thread-safe as far as grpc channels are; close() when done."""

    def __init__(self, address, token, timeout=600.0, tls_ca=None):
        """tls_ca: a PEM file of the CA (or self-signed certificate) that rankd's --tls-cert
        chains to; with it the channel is TLS, without it plaintext (loopback only)."""
        if not address:
            raise ValueError("no rankd address: pass address= or set CAME_RANKD_ADDRESS")
        if token is None:
            raise ValueError("no token: pass token= or set CAME_TOKEN")
        self.address = address
        self.timeout = float(timeout)
        self._metadata = (("authorization", "Bearer " + token),)
        options = [
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ]
        if tls_ca is None:
            self._channel = grpc.insecure_channel(address, options=options)
        else:
            with open(tls_ca, "rb") as f:
                credentials = grpc.ssl_channel_credentials(root_certificates=f.read())
            self._channel = grpc.secure_channel(address, credentials, options=options)
        self._stub = rank_pb2_grpc.RankStub(self._channel)

    def attach(self, request):
        # The trainer may start before its rankd listens: wait for it, up to the deadline.
        return self._call("Attach", request, wait_for_ready=True)

    def sync_parameters(self, attachment_id):
        return self._call("SyncParameters",
                          rank_pb2.SyncParametersRequest(attachment_id=attachment_id))

    def step(self, request):
        return self._call("Step", request)

    def save_checkpoint(self, attachment_id, step):
        return self._call("SaveCheckpoint", rank_pb2.SaveCheckpointRequest(
            attachment_id=attachment_id, step=step))

    def load_checkpoint(self, attachment_id, manifest_path=""):
        return self._call("LoadCheckpoint", rank_pb2.LoadCheckpointRequest(
            attachment_id=attachment_id, manifest_path=manifest_path))

    def export_state(self, attachment_id):
        return self._call("ExportState", rank_pb2.ExportStateRequest(attachment_id=attachment_id))

    def reserve_state_buffer(self, attachment_id):
        return self._call("ReserveStateBuffer",
                          rank_pb2.ReserveStateBufferRequest(attachment_id=attachment_id))

    def import_state(self, attachment_id, step):
        return self._call("ImportState", rank_pb2.ImportStateRequest(
            attachment_id=attachment_id, step=step))

    def detach(self, attachment_id, timeout=None):
        return self._call("Detach", rank_pb2.DetachRequest(attachment_id=attachment_id),
                          timeout=timeout)

    def close(self):
        self._channel.close()

    def _call(self, method, request, wait_for_ready=False, timeout=None):
        rpc = getattr(self._stub, method)
        try:
            return rpc(request, timeout=self.timeout if timeout is None else timeout,
                       metadata=self._metadata, wait_for_ready=wait_for_ready)
        except grpc.RpcError as e:
            error = (InvalidArgumentError if e.code() == grpc.StatusCode.INVALID_ARGUMENT
                     else CameError)
            raise error(method, e.code(), e.details()) from None
