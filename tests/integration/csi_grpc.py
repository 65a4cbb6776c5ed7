"""A real gRPC client for lazarusfs-csi tests (Debian's python3-grpcio).

The message classes come from src/csi-shim/csi.proto, compiled to a
descriptor set with protoc-c at test time, so no generated Python is needed.

As a program: csi_grpc.py PROTO SOCKET METHOD [JSON] calls one method and
prints the reply as JSON, or "error CODE: message" and exits 1.
"""
import json
import os
import subprocess
import sys
import tempfile

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory

SERVICES = {
    "GetPluginInfo": "Identity", "GetPluginCapabilities": "Identity", "Probe": "Identity",
}


class Error(Exception):
    def __init__(self, code, details):
        super().__init__("%s: %s" % (code.name, details))
        self.code = code
        self.details = details


class Client:
    def __init__(self, proto, sock, protoc="protoc-c"):
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "csi.pb")
            subprocess.run([protoc, "--descriptor_set_out=" + out,
                            "-I" + os.path.dirname(proto), os.path.basename(proto)],
                           check=True)
            with open(out, "rb") as f:
                fds = descriptor_pb2.FileDescriptorSet.FromString(f.read())
        self.pool = descriptor_pool.DescriptorPool()
        for fd in fds.file:
            self.pool.Add(fd)
        self.factory = message_factory.MessageFactory(self.pool)
        self.channel = grpc.insecure_channel("unix://" + sock)
        self.service = {}
        for name in ("Identity", "Node"):
            self.service[name] = self.pool.FindServiceByName("csi.v1." + name)

    def message(self, name, **fields):
        cls = self.factory.GetPrototype(self.pool.FindMessageTypeByName("csi.v1." + name))
        return json_format.ParseDict(fields, cls())

    def call(self, method, timeout=60, **fields):
        svc = self.service[SERVICES.get(method, "Node")]
        m = svc.FindMethodByName(method)
        req = self.factory.GetPrototype(m.input_type)
        resp = self.factory.GetPrototype(m.output_type)
        stub = self.channel.unary_unary("/%s/%s" % (svc.full_name, method),
                                        request_serializer=lambda x: x.SerializeToString(),
                                        response_deserializer=resp.FromString)
        try:
            return stub(json_format.ParseDict(fields, req()), timeout=timeout)
        except grpc.RpcError as e:
            raise Error(e.code(), e.details()) from None

    def raw(self, path, data, timeout=10):
        """Sends raw bytes to a method path; returns the raw reply."""
        stub = self.channel.unary_unary(path, request_serializer=lambda x: x,
                                        response_deserializer=lambda x: x)
        try:
            return stub(data, timeout=timeout)
        except grpc.RpcError as e:
            raise Error(e.code(), e.details()) from None


def main():
    proto, sock, method = sys.argv[1:4]
    fields = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
    try:
        r = Client(proto, sock).call(method, **fields)
    except Error as e:
        print("error %s: %s" % (e.code.name, e.details))
        return 1
    print(json_format.MessageToJson(r, preserving_proto_field_name=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
