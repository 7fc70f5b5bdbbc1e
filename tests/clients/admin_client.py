#!/usr/bin/env python3
"""controld's Admin API from Python, with no generated code: an example for deploy scripts, and
the independent (non-tonic) client the end-to-end test `tests/tests/clients.rs` drives.

It needs only PyPI's grpcio, grpcio-reflection and protobuf:

    python3 -m pip install 'grpcio>=1.60' 'grpcio-reflection>=1.60' 'protobuf>=5.26'

The message classes are built at run time from the file descriptors controld serves through
gRPC reflection, so the script works against any controld without a copy of the .proto file.

    admin_client.py [--authority NAME] SOCKET list [--reflection v1|v1alpha]
        every service the server lists, with the .proto file reflection returns for it
    admin_client.py [--authority NAME] SOCKET call Service/Method [JSON]
        one unary call; JSON in, JSON out (proto field names). A gRPC error is printed as
        `error: CODE: message` on stderr, exit status 1.

Examples:

    S=/run/controld/control.sock
    admin_client.py $S call proxy.v1.Admin/Status
    admin_client.py $S call proxy.v1.Admin/Validate \\
        "$(jq -n --rawfile t candidate.toml '{config_text: $t, file_name: "candidate.toml"}')"
    admin_client.py $S call proxy.v1.Admin/Reload '{"if_version": 4}'
"""

import argparse
import json
import sys

try:
    import grpc
    from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
    from grpc_reflection.v1alpha import reflection_pb2
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )
except ImportError as missing:
    print(
        f"admin_client.py: {missing}: it needs grpcio, grpcio-reflection and protobuf; "
        "install them with: python3 -m pip install 'grpcio>=1.60' 'grpcio-reflection>=1.60' "
        "'protobuf>=5.26'",
        file=sys.stderr,
    )
    sys.exit(3)

# The HTTP/2 `:authority` of every call. Over a Unix socket there is no host name, and grpcio
# (like older grpcurl releases) then sends the socket path, which is not a valid authority:
# controld's HTTP/2 layer resets such a stream (grpcio reports INTERNAL "Received RST_STREAM with
# error code 1"). Any host name does; "localhost" is the convention (grpcurl: -authority
# localhost).
AUTHORITY = "localhost"

# The path of each reflection service's one method. grpcio-reflection ships stubs for v1alpha
# only; v1 is the same protocol under a new package name (the messages are identical, field for
# field), so v1alpha's message classes serve for both.
REFLECTION_METHOD = {
    "v1": "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "v1alpha": "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
}


def connect(socket_path, authority=AUTHORITY):
    """A channel to controld's Unix socket, with a valid authority."""
    return grpc.insecure_channel(
        f"unix:{socket_path}", options=[("grpc.default_authority", authority)]
    )


def reflect(channel, version, requests):
    """Sends `requests` on one ServerReflectionInfo stream; the answers, in order."""
    info = channel.stream_stream(
        REFLECTION_METHOD[version],
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    answers = list(info(iter(requests), timeout=10))
    for answer in answers:
        if answer.HasField("error_response"):
            err = answer.error_response
            raise RuntimeError(f"reflection {version}: {err.error_code}: {err.error_message}")
    return answers


def list_services(channel, version):
    """[(service, file name)]: every service listed, and the file reflection returns for it."""
    (listing,) = reflect(
        channel, version, [reflection_pb2.ServerReflectionRequest(list_services="")]
    )
    names = [s.name for s in listing.list_services_response.service]
    answers = reflect(
        channel,
        version,
        [reflection_pb2.ServerReflectionRequest(file_containing_symbol=n) for n in names],
    )
    found = []
    for name, answer in zip(names, answers):
        raw = answer.file_descriptor_response.file_descriptor_proto[0]
        found.append((name, descriptor_pb2.FileDescriptorProto.FromString(raw).name))
    return found


def call(channel, method, request_json):
    """Calls `Service/Method` with the request given as JSON; the reply as a dict."""
    service_name, _, method_name = method.partition("/")
    # The descriptor pool asks the server (reflection v1alpha, grpcio-reflection's own
    # database) for each file it needs, dependencies included, on first use.
    pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
    service = pool.FindServiceByName(service_name)
    descriptor = service.FindMethodByName(method_name)
    if descriptor is None:
        raise KeyError(f"{service_name} has no method {method_name}")
    request_class = message_factory.GetMessageClass(descriptor.input_type)
    reply_class = message_factory.GetMessageClass(descriptor.output_type)
    request = json_format.Parse(request_json, request_class())
    stub = channel.unary_unary(
        f"/{service_name}/{method_name}",
        request_serializer=request_class.SerializeToString,
        response_deserializer=reply_class.FromString,
    )
    reply = stub(request, timeout=60)
    return json_format.MessageToDict(
        reply,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
    )


def main():
    parser = argparse.ArgumentParser(description="controld's Admin API, through reflection")
    parser.add_argument(
        "--authority", default=AUTHORITY, help="the HTTP/2 :authority (default: localhost)"
    )
    parser.add_argument("socket", help="controld's control socket")
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="the services and their files")
    listing.add_argument("--reflection", choices=sorted(REFLECTION_METHOD), default="v1")
    calling = commands.add_parser("call", help="one unary call, JSON in and out")
    calling.add_argument("method", help="Service/Method, e.g. proxy.v1.Admin/Status")
    calling.add_argument("request", nargs="?", default="{}", help="the request as JSON")
    args = parser.parse_args()

    with connect(args.socket, args.authority) as channel:
        try:
            if args.command == "list":
                for name, file in list_services(channel, args.reflection):
                    print(f"{name}\t{file}")
            else:
                print(json.dumps(call(channel, args.method, args.request), indent=2))
        except grpc.RpcError as e:
            print(f"error: {e.code().name}: {e.details()}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
